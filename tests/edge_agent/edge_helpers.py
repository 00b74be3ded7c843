"""Helpers of the edge agent tests (not fixtures): models, releases, configs, MQTT.

Configs made here trust the tests' release key (``release_keys``), and ``publish``
signs a ``ReleaseMessage`` with it, as the bridge would. ``make_config`` shortens the
trial of a new model (``FAST_TRIAL``): a model is good after two clean frames.
"""

from __future__ import annotations

import atexit
import base64
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import EdgeConfig
from edge_agent.release import ModelLoader
from qcloop.contracts import ModelRef, ReleaseEnvelope, ReleaseMessage, Thresholds, utcnow
from qcloop.mqtt import publish_retained, release_topic
from qcloop.settings import MqttSettings, StoreSettings
from qcloop.signing import generate_keypair, load_private_key, seal
from qcloop.storage import sha256_file

YOLO_CLASSES = [f"class{i}" for i in range(80)]  # yolov8n.yaml: 80 classes
FAST_TRIAL = {"trial_frames": 2, "trial_s": 0.0}  # [release]: good after two clean frames
_KEYS: list[tuple[Path, Path]] = []


def release_keys() -> tuple[Path, Path]:
    """The tests' release key pair (private, public), made once per test session."""
    if not _KEYS:
        folder = Path(tempfile.mkdtemp(prefix="qcloop-test-keys-"))
        atexit.register(shutil.rmtree, folder, True)
        _KEYS.append(generate_keypair(folder))
    return _KEYS[0]


def make_constant_model(
    path: Path,
    output: np.ndarray,
    imgsz: int = 320,
    names: str | None = None,
    dynamic: bool = False,
    gain: np.ndarray | None = None,
) -> Path:
    """An ONNX whose ``output0`` is ``output`` whatever the image: exact numbers end to end.

    ``dynamic``: input height and width left free, as a ``dynamic=True`` export. ``gain``
    (shaped as ``output``): ``output0`` is ``output + gain * mean(input)``, so each frame
    gets boxes of its own."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side: list[int | str] = ["height", "width"] if dynamic else [imgsz, imgsz]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *side])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))
    const = numpy_helper.from_array(output.astype(np.float32), name="const")
    # output0 = const + 0 * mean(images): the input is used, the output is exact
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["const", "nothing"], ["output0"]),
    ]
    factor = np.zeros((), np.float32) if gain is None else gain.astype(np.float32)
    zero = numpy_helper.from_array(factor, name="zero")
    graph = helper.make_graph(nodes, "constant", [image], [out], initializer=[const, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"imgsz": f"[{imgsz}, {imgsz}]", "stride": "32", "task": "detect"}
    if names is not None:
        meta["names"] = names
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def release_for(model: Path, fleet: str, version: str = "1", **changes: Any) -> ReleaseMessage:
    """A valid release of ``model`` (file:// URL) for ``fleet``; ``changes`` override fields.

    Its sequence is the version's number (1 otherwise); it expires in a day."""
    fields: dict[str, Any] = {
        "fleet": fleet,
        "model": ModelRef(name="scratch-detector", version=version),
        "sha256": sha256_file(model),
        "size": model.stat().st_size,
        "url": model.resolve().as_uri(),
        "input_size": 320,
        "class_names": YOLO_CLASSES,
        "thresholds": Thresholds(),
        "released_by": "tests",
        "sequence": int(version) if version.isdigit() else 1,
        "expires_at": utcnow() + timedelta(days=1),
    }
    fields.update(changes)
    return ReleaseMessage(**fields)


def envelope_of(release: ReleaseMessage, key_file: Path | None = None) -> ReleaseEnvelope:
    """``release`` sealed as the bridge does, signed with ``key_file`` (the tests' key)."""
    return seal(release, load_private_key(key_file or release_keys()[0])).envelope


def signed(release: ReleaseMessage, key_file: Path | None = None) -> bytes:
    """The payload the bridge publishes for ``release``, signed with ``key_file``."""
    return envelope_of(release, key_file).to_json().encode()


def unsigned(release: ReleaseMessage) -> bytes:
    """The payload of ``release`` without any signature."""
    return seal(release, None).payload()


def tampered(payload: bytes, *, drop: tuple[str, ...] = (), **changes: Any) -> bytes:
    """``payload`` with fields of its signed release changed or dropped, signatures kept."""
    envelope = ReleaseEnvelope.from_json(payload)
    body = {k: v for k, v in json.loads(base64.b64decode(envelope.signed)).items() if k not in drop}
    body.update(changes)
    forged = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    return envelope.model_copy(update={"signed": forged}).to_json().encode()


def publish(mqtt_url: str, fleet: str, payload: ReleaseMessage | bytes | str) -> None:
    """Publish a retained payload on the fleet's release topic (a release: signed)."""
    if isinstance(payload, ReleaseMessage):
        payload = signed(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    publish_retained(MqttSettings(url=mqtt_url), release_topic(fleet), data)


def make_config(
    tmp_path: Path,
    mqtt_url: str,
    store: StoreSettings,
    device_id: str,
    **overrides: Any,
) -> EdgeConfig:
    """An agent config for tests: hot folder ``tmp_path/inbox``, fast polling, the tests'
    release key trusted, a short trial (``FAST_TRIAL``)."""
    data: dict[str, Any] = {
        "device_id": device_id,
        "fleet": device_id + "-fleet",
        "model_dir": tmp_path / "models",
        "state_dir": tmp_path / "state",
        "state_interval_s": 0.5,
        "source": {"kind": "folder", "path": tmp_path / "inbox", "poll_interval_s": 0.05},
        "feedback": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5, "drain_timeout_s": 5.0},
        "link": {"reconnect_min_s": 1, "reconnect_max_s": 1},
        "mqtt": {"url": mqtt_url},
        "store": store,
        "release": {"public_key": release_keys()[1], **FAST_TRIAL},
    }
    data.update(overrides)
    return EdgeConfig.model_validate(data)


class Listener:
    """Collects the messages of one topic filter (a real MQTT subscriber)."""

    def __init__(self, mqtt_url: str, topic: str) -> None:
        from qcloop.mqtt import connect, make_client

        settings = MqttSettings(url=mqtt_url)
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = make_client(settings)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        connect(self.client, settings)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on ``topic``."""
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")


def make_flaky_model(path: Path, imgsz: int = 320, classes: int = 80) -> Path:
    """An ONNX that passes the smoke test (blank grey input) but fails on any real frame.

    It gathers element ``round(1000 * (mean - 114/255))`` of a one-element vector: index 0
    for the blank smoke-test input, out of bounds (an onnxruntime error) for a real frame.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = 4 + classes
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, channels, 10])
    inits = [
        numpy_helper.from_array(np.zeros((1, channels, 10), np.float32), "const"),
        numpy_helper.from_array(np.array(114 / 255, np.float32), "blank"),
        numpy_helper.from_array(np.array(1000.0, np.float32), "scale"),
        numpy_helper.from_array(np.array([0.0], np.float32), "one"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Sub", ["mean", "blank"], ["delta"]),
        helper.make_node("Mul", ["delta", "scale"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["one", "index"], ["picked"], axis=0),
        helper.make_node("Add", ["const", "picked"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "flaky", [image], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def write_toml(
    tmp_path: Path,
    device: str,
    mqtt_url: str = "mqtt://127.0.0.1:1883",
    *,
    source: str = 'kind = "simulated"',
    store: StoreSettings | None = None,
    top: str = "",
    sections: str = "",
) -> Path:
    """``tmp_path/edge.toml`` for the CLI: fleet ``<device>-fleet``, state under ``tmp_path``.

    ``top`` adds top-level lines, ``sections`` whole sections (without ``[release]``, one
    trusting the tests' key); the store is a local folder unless an S3 ``store`` is given.
    """
    if store is not None and store.kind == "s3":
        where = f'kind = "s3"\nendpoint = "{store.endpoint}"\nbucket = "{store.bucket}"\n'
        where += 'access_key = "k"\nsecret_key = "s"'
    else:
        where = f'kind = "local"\npath = "{store.path if store else tmp_path / "store"}"'
    if "[release]" not in sections:
        sections += f'\n[release]\npublic_key = "{release_keys()[1]}"\n'
    path = tmp_path / "edge.toml"
    path.write_text(
        f'device_id = "{device}"\nfleet = "{device}-fleet"\n{top}\n'
        f'model_dir = "{tmp_path / "models"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[source]\n{source}\n[mqtt]\nurl = "{mqtt_url}"\n[store]\n{where}\n{sections}\n'
    )
    return path


def taken(loader: ModelLoader) -> ModelRef:
    """The model the loader offers next (and marks it served)."""
    assert loader.wait_ready(10), "no model became ready"
    ready = loader.take_ready()
    assert ready is not None
    loader.serving(ready)
    return ready.ref

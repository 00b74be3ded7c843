"""The trust chain on the device: signed bytes, fleet sequence, expiry, trusted key ids,
key rotation, a key required to run, and downloads capped at the signed size."""

from __future__ import annotations

import http.server
import logging
import shutil
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import EdgeConfig, ReleaseConfig
from edge_agent.history import read_history, record_good
from edge_agent.release import ModelLoader, load_last_good
from edge_agent.stats import AgentStats, Counters
from edge_agent.store import LazyStore
from edge_agent.trust import SEQUENCE_FILE, ReleaseGate
from qcloop.contracts import ModelRef, ReleaseMessage, utcnow
from qcloop.errors import ConfigError
from qcloop.mqtt import device_release_topic, publish_retained
from qcloop.settings import MqttSettings, StoreSettings
from qcloop.signing import generate_keypair
from qcloop.storage import open_store
from tests.edge_agent.conftest import MotoProcess
from tests.edge_agent.edge_helpers import (
    envelope_of,
    make_config,
    make_constant_model,
    publish,
    release_for,
    release_keys,
    signed,
    taken,
    tampered,
    unsigned,
    wait_until,
    write_toml,
)

V1 = ModelRef(name="scratch-detector", version="1")
V2 = ModelRef(name="scratch-detector", version="2")


def model(tmp_path: Path, n: int) -> Path:
    """A distinct valid model per ``n`` (different bytes, different sha256)."""
    return make_constant_model(tmp_path / f"model{n}.onnx", np.full((1, 84, 10), n / 1000))


def config_for(tmp_path: Path, store: StoreSettings | None = None, **release: object) -> EdgeConfig:
    """A device of fleet ``f`` trusting the tests' key unless ``release`` names keys."""
    keys = {} if {"public_key", "public_keys"} & set(release) else {"public_key": release_keys()[1]}
    return EdgeConfig.model_validate(
        {
            "device_id": "cam1",
            "fleet": "f",
            "model_dir": tmp_path / "models",
            "source": {"kind": "simulated"},
            "release": {**keys, **release},
            "store": store or StoreSettings(kind="local", path=tmp_path / "store"),
        }
    )


@pytest.fixture
def loaders() -> Iterator[list[ModelLoader]]:
    made: list[ModelLoader] = []
    yield made
    for loader in made:
        loader.close()


def loader_with(config: EdgeConfig, loaders: list[ModelLoader]) -> tuple[ModelLoader, Counters]:
    counters = Counters()
    loader = ModelLoader(config, LazyStore(config.store), counters, ReleaseGate(config))
    loader.start()
    loaders.append(loader)
    return loader, counters


def refused(loader: ModelLoader, counters: Counters, count: int) -> None:
    """``count`` refusals so far and nothing offered."""
    wait_until(lambda: counters.get("releases_refused") == count, what=f"{count} refusals")
    assert loader.take_ready() is None


# ------------------------------------------------------------------ on a running agent


def running(agent: Agent) -> tuple[threading.Thread, list[AgentStats]]:
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=60)), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.integration
def test_an_older_release_replayed_or_retained_on_the_device_topic_never_downgrades(
    mqtt_url: str, tmp_path: Path
) -> None:
    # given an agent that took v1 (#1), then v2 (#2), on the simulated camera
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "interval_s": 0.05}
    config = make_config(
        tmp_path, mqtt_url, store, "cam-replay", source=source, feedback={"enabled": False}
    )
    v1 = signed(release_for(model(tmp_path, 1), config.fleet, version="1"))
    publish(mqtt_url, config.fleet, v1)
    agent = Agent(config)
    thread, out = running(agent)
    device_topic = device_release_topic(config.device_id)
    settings = MqttSettings(url=mqtt_url)
    try:
        wait_until(lambda: read_history(config.model_dir) != [], what="v1 served, good")
        publish(mqtt_url, config.fleet, release_for(model(tmp_path, 2), config.fleet, "2"))
        wait_until(lambda: agent.serving_model == V2, what="v2 served")
        # when v1 is replayed byte for byte, and an older signed release is retained on the
        # device's own release topic
        publish(mqtt_url, config.fleet, v1)
        wait_until(lambda: agent.stats().releases_refused == 1, what="the replay refused")
        older = signed(release_for(model(tmp_path, 1), config.fleet, version="1"))
        publish_retained(settings, device_topic, older)
        wait_until(lambda: agent.stats().releases_refused == 2, what="the override refused")
        frames = agent.stats().frames_inferred
        wait_until(lambda: agent.stats().frames_inferred > frames + 2, what="inspection")
    finally:
        agent.stop()
        thread.join(20)
    # then v2 served all along, and stays the newest good model
    (stats,) = out
    assert (stats.serving_model, stats.swaps, stats.releases_refused) == (V2, 2, 2)
    assert [m.release.model for m in read_history(config.model_dir)] == [V2, V1]
    # and after a restart (the replayed v1 still retained on the fleet topic, the older one
    # on the device's), the sequence taken before holds: both are refused, v2 serves
    again = Agent(config)
    thread, out = running(again)
    try:
        wait_until(lambda: again.stats().releases_refused >= 1, what="refusals after restart")
        frames = again.stats().frames_inferred
        wait_until(lambda: again.stats().frames_inferred > frames + 2, what="inspection")
    finally:
        again.stop()
        thread.join(20)
        publish_retained(settings, device_topic, b"")
    (stats,) = out
    assert (stats.serving_model, stats.swaps) == (V2, 0)


# ------------------------------------------------------------------ what the gate refuses


def test_a_stripped_field_or_a_raised_sequence_breaks_the_signature(
    tmp_path: Path, loaders: list[ModelLoader]
) -> None:
    loader, counters = loader_with(config_for(tmp_path), loaders)
    payload = signed(release_for(model(tmp_path, 1), "f"))
    # thresholds holds its defaults: without it the release would read the same
    loader.submit(tampered(payload, drop=("thresholds",)))
    loader.submit(tampered(payload, sequence=99))
    refused(loader, counters, 2)
    loader.submit(payload)
    assert taken(loader) == V1


def test_unsigned_releases_are_refused_unless_the_insecure_flag_is_set_then_warned(
    tmp_path: Path, loaders: list[ModelLoader], caplog: pytest.LogCaptureFixture
) -> None:
    release = release_for(model(tmp_path, 1), "f")
    # given a device with a key: an unsigned release is refused
    loader, counters = loader_with(config_for(tmp_path / "keyed"), loaders)
    loader.submit(unsigned(release))
    refused(loader, counters, 1)
    # given a lab device set to insecure_unsigned (and no key)
    lab = config_for(tmp_path / "lab", public_keys=[], insecure_unsigned=True)
    with caplog.at_level(logging.WARNING, logger="edge_agent.trust"):
        loader, counters = loader_with(lab, loaders)
        loader.submit(unsigned(release))
        # then the same release is taken, with a warning at start and one on taking it
        assert taken(loader) == V1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("insecure_unsigned = true: unsigned releases are taken" in w for w in warnings)
    assert "unsigned release taken (release.insecure_unsigned = true)" in warnings


def test_an_expired_release_is_refused(tmp_path: Path, loaders: list[ModelLoader]) -> None:
    loader, counters = loader_with(config_for(tmp_path), loaders)
    past = utcnow() - timedelta(days=40)
    stale = release_for(
        model(tmp_path, 1), "f", released_at=past, expires_at=past + timedelta(days=30)
    )
    loader.submit(signed(stale))
    refused(loader, counters, 1)


def test_a_release_by_a_key_not_trusted_is_refused_naming_it(
    tmp_path: Path, loaders: list[ModelLoader], caplog: pytest.LogCaptureFixture
) -> None:
    stranger, _ = generate_keypair(tmp_path / "stranger")
    loader, counters = loader_with(config_for(tmp_path), loaders)
    payload = signed(release_for(model(tmp_path, 1), "f"), stranger)
    with caplog.at_level(logging.ERROR, logger="edge_agent.release"):
        loader.submit(payload)
        refused(loader, counters, 1)
    (line,) = [r for r in caplog.records if r.getMessage().startswith("untrusted release")]
    assert "which is not trusted" in line.error  # type: ignore[attr-defined]


def test_the_sequence_taken_survives_a_restart_and_equal_means_identical(
    tmp_path: Path, loaders: list[ModelLoader]
) -> None:
    config = config_for(tmp_path)
    v5 = signed(release_for(model(tmp_path, 5), "f", version="5"))
    loader, _ = loader_with(config, loaders)
    loader.submit(v5)
    assert taken(loader).version == "5"
    loader.close()
    assert '"sequence": 5' in (config.state_dir / SEQUENCE_FILE).read_text()
    # when the device starts again (a new gate on the same state)
    loader, counters = loader_with(config, loaders)
    older = signed(release_for(model(tmp_path, 4), "f", version="4"))
    other5 = signed(release_for(model(tmp_path, 6), "f", version="5"))
    loader.submit(older)  # #4 < #5
    loader.submit(other5)  # #5 again, other bytes
    refused(loader, counters, 2)
    loader.submit(v5)  # #5 byte for byte (a reconnect): no refusal, no error
    loader.submit(signed(release_for(model(tmp_path, 6), "f", version="6")))
    assert taken(loader).version == "5"  # the new loader serves nothing yet: #5 is offered
    assert taken(loader).version == "6"
    assert counters.get("releases_refused") == 2


# ------------------------------------------------------------------ keys


def test_after_key_rotation_the_new_key_releases_and_the_old_last_good_still_loads(
    tmp_path: Path, loaders: list[ModelLoader]
) -> None:
    old_key, old_pub = release_keys()
    new_key, new_pub = generate_keypair(tmp_path / "next")
    # given a last good v1 signed by the old key
    config = config_for(tmp_path, public_keys=[old_pub, new_pub])
    config.model_dir.mkdir(parents=True)
    path = Path(shutil.copy(model(tmp_path, 1), config.model_dir / "v1.onnx"))
    record_good(config.model_dir, envelope_of(release_for(path, "f"), old_key), path, 3)
    # when the device starts trusting the old and the new key
    counters = Counters()
    start = load_last_good(config, ReleaseGate(config), counters)
    # then v1 loads, and a release signed by the new key is taken
    assert start is not None and start.ref == V1 and counters.get("errors") == 0
    loader, counters = loader_with(config, loaders)
    loader.submit(signed(release_for(model(tmp_path, 2), "f", version="2"), new_key))
    assert taken(loader) == V2
    # and a device trusting only the new key no longer loads the old model at start
    only_new = config_for(tmp_path, public_key=new_pub)
    assert load_last_good(only_new, ReleaseGate(only_new), counters) is None


def test_without_a_key_the_agent_does_not_start_and_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_key = write_toml(tmp_path, "cam-nokey", sections="[release]\nkeep_models = 3")
    assert main(["check-config", "--config", str(no_key)]) == 1
    assert main(["run", "--config", str(no_key), "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("release.public_key is required") == 2 and "qcloop keys generate" in err
    # a config object built around the check does not start either
    keyless = config_for(tmp_path).model_copy(update={"release": ReleaseConfig()})
    with pytest.raises(ConfigError, match=r"release\.insecure_unsigned = true"):
        Agent(keyless).run(timeout_s=1)
    # and a lab that says so explicitly passes the check
    (tmp_path / "lab").mkdir()
    lab = write_toml(tmp_path / "lab", "cam-lab", sections="[release]\ninsecure_unsigned = true")
    assert main(["check-config", "--config", str(lab)]) == 0


# ------------------------------------------------------------------ downloads capped


class Oversized(http.server.BaseHTTPRequestHandler):
    """Serves the model's bytes, then keeps sending (up to 256 MiB), with or without a
    Content-Length; counts what it managed to send."""

    model = b""
    sent: ClassVar[list[int]] = []
    chunk = b"\0" * 65536
    total = 256 * 1024 * 1024

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path.endswith("announced.onnx"):
            self.send_header("Content-Length", str(self.total))
        self.end_headers()
        written = 0
        try:
            self.wfile.write(self.model)
            written = len(self.model)
            while written < self.total:
                self.wfile.write(self.chunk)
                written += len(self.chunk)
        except OSError:  # the client hung up
            pass
        self.sent.append(written)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Oversized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def no_model_kept(config: EdgeConfig) -> bool:
    return not [p for p in config.model_dir.rglob("*") if p.is_file()]


@pytest.mark.integration
def test_an_oversized_http_download_stops_at_the_signed_size(
    http_server: str, tmp_path: Path, loaders: list[ModelLoader]
) -> None:
    # given a release signing a model's size, served with far more bytes behind it
    path = model(tmp_path, 1)
    Oversized.model, Oversized.sent = path.read_bytes(), []
    config = config_for(tmp_path)
    loader, counters = loader_with(config, loaders)
    # when the device fetches it, with and without a Content-Length saying so
    for n, name in enumerate(("streamed.onnx", "announced.onnx"), start=1):
        url = f"{http_server}/{name}"
        loader.submit(signed(release_for(path, "f", version=str(n), url=url)))
        refused(loader, counters, n)
    # then both were refused after a few MiB at most, and nothing was kept
    assert len(Oversized.sent) == 2 and max(Oversized.sent) < 32 * 1024 * 1024
    assert no_model_kept(config)


@pytest.mark.integration
def test_an_oversized_s3_object_is_refused_without_reading_it_all(
    own_s3: MotoProcess, tmp_path: Path, loaders: list[ModelLoader]
) -> None:
    # given a 48 MiB object on a real S3 endpoint (its own process) released as a small model
    own_s3.up()
    store = own_s3.settings("oversized")
    path = model(tmp_path, 1)
    open_store(store).put_bytes("models/big.onnx", path.read_bytes() + b"\0" * (48 << 20))
    release = release_for(path, "f", url="s3://oversized/models/big.onnx")
    config = config_for(tmp_path, store)
    loader, counters = loader_with(config, loaders)
    # when the device fetches it
    tracemalloc.start()
    try:
        loader.submit(signed(release))
        refused(loader, counters, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # then it was refused with a few MiB in memory at most, and nothing was kept
    assert peak < 8 * 1024 * 1024, peak
    assert no_model_kept(config)


def test_a_release_message_keeps_its_exact_bytes_in_the_history(tmp_path: Path) -> None:
    release: ReleaseMessage = release_for(model(tmp_path, 1), "f")
    envelope = envelope_of(release)
    (tmp_path / "m").mkdir()
    record_good(tmp_path / "m", envelope, tmp_path / "m" / "v1.onnx", 3)
    (entry,) = read_history(tmp_path / "m")
    assert entry.envelope == envelope  # the signed bytes, as received
    assert entry.release.model == release.model and entry.release.key_id is not None


def test_at_start_the_loader_knows_the_last_good_model_before_any_release_arrives(
    mqtt_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a box whose last good model is v1, and v1's release retained on the broker
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "interval_s": 0.05}
    config = make_config(
        tmp_path, mqtt_url, store, "cam-start", source=source, feedback={"enabled": False}
    )
    first = Agent(config)
    v1 = signed(release_for(model(tmp_path, 1), config.fleet, version="1"))
    publish(mqtt_url, config.fleet, v1)
    thread, _ = running(first)
    try:
        wait_until(lambda: read_history(config.model_dir) != [], what="v1 served, good")
    finally:
        first.stop()
        thread.join(20)
    # when the agent starts again, and the loader thread starts
    seen: list[object] = []
    start = ModelLoader.start

    def start_and_look(loader: ModelLoader) -> None:
        seen.append(loader._current)  # what the loader serves when releases begin to arrive
        start(loader)

    monkeypatch.setattr(ModelLoader, "start", start_and_look)
    again = Agent(config)
    thread, out = running(again)
    try:
        wait_until(lambda: again.stats().frames_inferred > 3, what="inspection")
    finally:
        again.stop()
        thread.join(20)
    # then it already knew v1 from disk: the retained v1 is not loaded a second time
    assert seen and seen[0] is not None and seen[0][0] == V1
    (stats,) = out
    assert (stats.serving_model, stats.swaps, stats.releases_refused) == (V1, 0, 0)

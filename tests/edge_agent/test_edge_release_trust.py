"""Release trust and recovery: signatures, the per-device override, last good models, rollback."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import EdgeConfig
from edge_agent.history import HISTORY_FILE, read_history, record_good
from edge_agent.release import (
    ModelLoader,
    ModelOnDisk,
    load_last_good,
    load_local,
    open_model,
)
from edge_agent.stats import AgentStats, Counters
from edge_agent.store import LazyStore
from edge_agent.trust import ReleaseGate
from qcloop.contracts import ModelRef, ReleaseMessage, Thresholds
from qcloop.errors import ConfigError, IntegrityError
from qcloop.mqtt import device_release_topic, publish_retained
from qcloop.settings import MqttSettings, StoreSettings
from qcloop.signing import generate_keypair
from tests.edge_agent.edge_helpers import (
    envelope_of,
    make_config,
    make_constant_model,
    make_flaky_model,
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
from tests.services import free_port


def model(tmp_path: Path, n: int) -> Path:
    """A distinct valid model per ``n`` (different bytes, different sha256)."""
    output = np.full((1, 84, 10), n / 1000, np.float32)
    return make_constant_model(tmp_path / f"model{n}.onnx", output)


def config_for(tmp_path: Path, **release: object) -> EdgeConfig:
    """A device of fleet ``f`` trusting the tests' key unless ``release`` says otherwise."""
    keys = {} if {"public_key", "public_keys"} & set(release) else {"public_key": release_keys()[1]}
    return EdgeConfig.model_validate(
        {
            "device_id": "cam1",
            "fleet": "f",
            "model_dir": tmp_path / "m",
            "source": {"kind": "simulated"},
            "release": {**keys, **release},
        }
    )


def loader_with(config: EdgeConfig) -> tuple[ModelLoader, Counters]:
    counters = Counters()
    loader = ModelLoader(config, LazyStore(config.store), counters, ReleaseGate(config))
    loader.start()
    return loader, counters


# ------------------------------------------------------------------ signatures


def test_with_a_public_key_only_correctly_signed_releases_load(tmp_path: Path) -> None:
    # given a device holding the fleet's public key, and a stranger's key
    key, pub = generate_keypair(tmp_path / "keys")
    stranger, _ = generate_keypair(tmp_path / "other")
    loader, counters = loader_with(config_for(tmp_path, public_key=pub))
    good = release_for(model(tmp_path, 1), "f", version="1")
    # when it gets an unsigned release, one signed by a stranger, a tampered one, then a good one
    loader.submit(unsigned(good))
    loader.submit(signed(good, stranger))
    loader.submit(tampered(signed(good, key), url="file:///elsewhere.onnx"))
    loader.submit(signed(good, key))
    # then only the signed one is offered; three refusals counted
    assert taken(loader).version == "1"
    assert counters.get("releases_refused") == 3 and counters.get("errors") == 3
    loader.close()


def test_with_approvers_only_releases_an_approver_signed_for_load(tmp_path: Path) -> None:
    from qcloop.approvals import ApprovalStatement, sign_approval
    from qcloop.contracts import utcnow
    from qcloop.signing import load_private_key

    # Given a device that checks approvals itself (alice's key), and a stranger's key
    alice, alice_pub = generate_keypair(tmp_path / "alice", name="alice")
    mallory, _ = generate_keypair(tmp_path / "mallory", name="mallory")
    loader, counters = loader_with(config_for(tmp_path, approvers=[alice_pub.parent]))
    files = {n: model(tmp_path, n) for n in (1, 2, 3, 4)}

    def approved(n: int, by: Path, **statement: object) -> str:
        fields: dict[str, object] = {
            "model": "scratch-detector",
            "version": str(n),
            "onnx_sha256": release_for(files[n], "f").sha256,
            "approved_by": by.stem,
            "approved_at": utcnow(),
            "alias": "production",
            "key_id": "0" * 16,
        }
        fields.update(statement)
        envelope = sign_approval(ApprovalStatement.model_validate(fields), load_private_key(by))
        return envelope.to_json()

    # When releases come signed by the bridge: without approval, approved by a stranger,
    # alice's approval of version 3 copied onto version 2, alice's approval of other bytes
    loader.submit(signed(release_for(files[1], "f", version="1")))
    loader.submit(signed(release_for(files[2], "f", version="2", approval=approved(2, mallory))))
    loader.submit(signed(release_for(files[2], "f", version="2", approval=approved(3, alice))))
    other = approved(3, alice, onnx_sha256="b" * 64)
    loader.submit(signed(release_for(files[3], "f", version="3", approval=other)))
    # Then each is refused, saying why
    wait_until(lambda: counters.get("releases_refused") == 4, what="four refusals")
    assert "another file" in (loader.last_error or ""), loader.last_error
    assert loader.wait_ready(0.5) is False
    # and the one alice approved for its exact bytes loads
    loader.submit(signed(release_for(files[4], "f", version="4", approval=approved(4, alice))))
    assert taken(loader).version == "4"
    assert counters.get("releases_refused") == 4
    loader.close()


def test_an_unreadable_public_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match=r"bad.pub"):
        ReleaseGate(config_for(tmp_path, public_key=tmp_path / "bad.pub"))


# ------------------------------------------------------------------ device override


def test_the_device_release_wins_while_present(tmp_path: Path) -> None:
    loader, counters = loader_with(config_for(tmp_path))
    v1, v2, v3 = (release_for(model(tmp_path, n), "f", version=str(n)) for n in (1, 2, 3))
    loader.submit(signed(v1))  # fleet
    assert taken(loader).version == "1"
    loader.submit(signed(v2), "device")  # the override wins
    assert taken(loader).version == "2"
    loader.submit(signed(v3))  # a new fleet release waits while the override is present
    assert not loader.wait_ready(0.5)
    loader.submit(b"", "device")  # the override is cleared: the fleet's release applies
    assert taken(loader).version == "3"
    assert counters.get("errors") == 0
    loader.close()


def test_oversized_payloads_are_refused(tmp_path: Path) -> None:
    loader, counters = loader_with(config_for(tmp_path, max_payload_bytes=4096))
    good = release_for(model(tmp_path, 1), "f")
    huge = good.model_copy(update={"released_by": "x" * 5000})
    loader.submit(signed(huge))
    wait_until(lambda: counters.get("releases_refused") == 1, what="the refusal")
    loader.submit(signed(good))
    assert taken(loader).version == "1"
    loader.close()


# ------------------------------------------------------------------ last good models


def test_history_keeps_the_last_n_models_on_disk(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    for n in range(1, 5):
        path = shutil.copy(model(tmp_path, n), model_dir / f"v{n}.onnx")
        envelope = envelope_of(release_for(Path(path), "f", version=str(n)))
        record_good(model_dir, envelope, Path(path), keep=2)
    assert [m.release.model.version for m in read_history(model_dir)] == ["4", "3"]
    assert sorted(p.name for p in model_dir.glob("*.onnx")) == ["v3.onnx", "v4.onnx"]
    assert not list(model_dir.glob(".*tmp"))  # written atomically, nothing left behind
    (model_dir / HISTORY_FILE).write_text("{broken")
    assert read_history(model_dir) == []


def test_start_falls_back_past_a_corrupted_last_good_model(tmp_path: Path) -> None:
    # given two good models, the newest corrupted on disk
    config = config_for(tmp_path)
    config.model_dir.mkdir()
    for n in (1, 2):
        path = shutil.copy(model(tmp_path, n), config.model_dir / f"v{n}.onnx")
        envelope = envelope_of(release_for(Path(path), "f", version=str(n)))
        record_good(config.model_dir, envelope, Path(path), 3)
    (config.model_dir / "v2.onnx").write_bytes(b"garbage")
    # when the agent looks for the last good model
    counters = Counters()
    serving = load_last_good(config, ReleaseGate(config), counters)
    # then it takes the older one, counting the broken one
    assert serving is not None and serving.ref.version == "1"
    assert counters.get("errors") == 1


@pytest.mark.integration
def test_offline_start_serves_the_last_good_model(tmp_path: Path, tag_images: list[Path]) -> None:
    # given a last good model on disk, and no broker at all
    dead = f"mqtt://127.0.0.1:{free_port()}"
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, dead, store, "cam-offline", feedback={"enabled": False})
    config.model_dir.mkdir()
    path = Path(shutil.copy(model(tmp_path, 7), config.model_dir / "v7.onnx"))
    v7 = envelope_of(release_for(path, config.fleet, version="7"))
    record_good(config.model_dir, v7, path, 3)
    (tmp_path / "inbox").mkdir()
    for image in tag_images[:2]:
        shutil.copy(image, tmp_path / "inbox")
    # when it runs
    stats = Agent(config).run(max_frames=2, timeout_s=20)
    # then it inspected with v7 at once
    assert stats.serving_model == ModelRef(name="scratch-detector", version="7")
    assert (stats.frames_inferred, stats.swaps) == (2, 0)


# ------------------------------------------------------------------ rollback


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_a_model_failing_on_real_frames_is_rolled_back(
    workers: int, mqtt_url: str, tmp_path: Path
) -> None:
    # given an agent serving v1 on the simulated camera (one or two frames in flight)
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "interval_s": 0.02}
    config = make_config(
        tmp_path,
        mqtt_url,
        store,
        f"cam-rollback-{workers}",
        source=source,
        feedback={"enabled": False},
        inference_workers=workers,
    )
    publish(mqtt_url, config.fleet, release_for(model(tmp_path, 1), config.fleet))
    agent = Agent(config)
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=30)), daemon=True)
    thread.start()
    wait_until(lambda: read_history(config.model_dir) != [], what="v1 inferring, good")
    # when v2 passes the smoke test but fails on every real frame (a device override)
    flaky = make_flaky_model(tmp_path / "flaky.onnx")
    v2 = release_for(flaky, config.fleet, version="2")
    settings = MqttSettings(url=mqtt_url)
    publish_retained(settings, device_release_topic(config.device_id), signed(v2))
    wait_until(lambda: agent.stats().rollbacks == 1, what="the rollback")
    frames = agent.stats().frames_inferred
    wait_until(lambda: agent.stats().frames_inferred > frames + 2, what="v1 inferring again")
    agent.stop()
    thread.join(10)
    publish_retained(settings, device_release_topic(config.device_id), b"")
    # then v1 serves again (swaps: v1, v2, back to v1), v2 failed 3 frames and is forgotten
    (stats,) = out
    assert stats.serving_model == ModelRef(name="scratch-detector", version="1")
    assert (stats.swaps, stats.rollbacks) == (3, 1)
    # a second frame in flight on v2 may fail too, but does not count towards v1's failures
    assert stats.errors == 3 if workers == 1 else stats.errors in (3, 4)
    (good,) = read_history(config.model_dir)
    assert good.release.model.version == "1"
    assert [p.name for p in config.model_dir.glob("*.onnx")] == [good.file]  # v2 deleted


def test_run_with_an_unreadable_public_key_exits_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.cli import main

    missing = f'[release]\npublic_key = "{tmp_path / "missing.pub"}"'
    config = write_toml(tmp_path, "cam1", sections=missing)
    assert main(["run", "--config", str(config), "--timeout", "1"]) == 1
    assert "missing.pub" in capsys.readouterr().err


def test_the_model_to_roll_back_to_is_kept_on_disk_and_verified_when_reloaded(
    tmp_path: Path,
) -> None:
    # given a served release, remembered without its session
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, "mqtt://127.0.0.1:1", store, "cam-keep")
    path = model(tmp_path, 1)
    serving = open_model(release_for(path, config.fleet), path, config)
    kept = ModelOnDisk.of(serving)
    # when it is reloaded, it serves again as the same model, in a new session
    again = kept.reopen(config)
    assert (again.ref, again.sha256) == (serving.ref, serving.sha256)
    assert again.detector is not serving.detector
    # and a file changed on disk since is refused
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        kept.reopen(config)
    # a --model file too
    local = ModelOnDisk.of(load_local(model(tmp_path, 2), config))
    local.path.unlink()
    with pytest.raises(IntegrityError, match="gone or changed"):
        local.reopen(config)


def test_rect_input_from_the_config_reaches_released_and_local_models(tmp_path: Path) -> None:
    # given a dynamic-input model, released and given with --model
    output = np.full((1, 84, 10), 0.001, np.float32)
    path = make_constant_model(tmp_path / "dynamic.onnx", output, dynamic=True)
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, "mqtt://127.0.0.1:1", store, "cam-rect")
    # then by default frames go on the smallest canvas of stride multiples
    assert open_model(release_for(path, config.fleet), path, config).detector.plan.stride == 32
    assert load_local(path, config).detector.plan.stride == 32
    # and with rect_input = false on the square input
    square = config.model_copy(update={"rect_input": False})
    assert open_model(release_for(path, config.fleet), path, square).detector.plan.stride == 0
    assert load_local(path, square).detector.plan.stride == 0


def test_the_releases_thresholds_and_letterbox_reach_the_detector(tmp_path: Path) -> None:
    # given a dynamic-input model and a device that pads square (rect_input = false)
    output = np.full((1, 84, 10), 0.001, np.float32)
    path = make_constant_model(tmp_path / "dynamic.onnx", output, dynamic=True)
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, "mqtt://127.0.0.1:1", store, "cam-lb")
    square = config.model_copy(update={"rect_input": False})
    # when the release carries the thresholds the evaluation scored the model with
    scored = Thresholds(letterbox="rect")  # as components.release.scoring_thresholds
    release = ReleaseMessage.from_json(release_for(path, config.fleet, thresholds=scored).to_json())
    detector = open_model(release, path, square).detector
    # then the device applies them: NMS IoU, confidence and the rect letterbox
    assert (detector.iou, detector.confidence, detector.plan.stride) == (0.7, 0.25, 32)
    # and a release that says square pads square on a rect device
    squared = release_for(path, config.fleet, thresholds=Thresholds(letterbox="square"))
    assert open_model(squared, path, config).detector.plan.stride == 0

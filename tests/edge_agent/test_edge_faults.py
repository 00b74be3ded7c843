"""Fault tests: real mosquitto and moto processes killed and restarted, kill -9 of the agent,
a full spool, and every kind of bad release or file. Each takes seconds (short timeouts)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.agent import Agent
from edge_agent.config import EdgeConfig
from edge_agent.history import read_history
from edge_agent.rejected import REJECTED_FILE, RejectedList
from edge_agent.stats import AgentStats
from edge_agent.trial import CRASHED, TRIAL_FILE, TrialRecord
from qcloop.contracts import InferenceResult, ModelRef, ReleaseMessage
from qcloop.devices import DeviceState
from qcloop.mqtt import device_release_topic, publish_retained, results_topic, state_topic
from qcloop.settings import MqttSettings, StoreSettings
from qcloop.signing import generate_keypair
from qcloop.storage import open_store
from tests.edge_agent.conftest import MotoProcess
from tests.edge_agent.edge_helpers import (
    FAST_TRIAL,
    Listener,
    make_config,
    make_constant_model,
    publish,
    release_for,
    release_keys,
    signed,
    tampered,
    unsigned,
    wait_until,
    write_toml,
)
from tests.services import MosquittoProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
V1 = ModelRef(name="scratch-detector", version="1")
FAST = {"backoff_initial_s": 0.1, "backoff_max_s": 0.3, "store_timeout_s": 2.0}


def blank_model(tmp_path: Path, n: int = 0) -> Path:
    """A fast model that finds nothing (every frame is a hard one); ``n`` varies its bytes."""
    return make_constant_model(tmp_path / f"blank{n}.onnx", np.full((1, 84, 10), n / 1e4))


# once the photos run out: their mirror images, other bytes but the same kind of frame
MIRRORS = (
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_180,
)


def copy_frames(metal_tags: Path, inbox: Path, count: int, start: int = 0) -> list[Path]:
    """``count`` distinct real frames into the hot folder: the sample's photos (sorted), then
    their mirror images (up to four times the sample)."""
    inbox.mkdir(parents=True, exist_ok=True)
    photos = sorted((metal_tags / "images").glob("*.jpg"))
    return [_frame(photos, n, inbox) for n in range(start, start + count)]


def _frame(photos: list[Path], n: int, inbox: Path) -> Path:
    """Frame number ``n``: a photo as it is, or one of its mirror images, whole in ``inbox``."""
    turn, index = divmod(n, len(photos))
    source = photos[index]
    if turn == 0:
        return Path(shutil.copy(source, inbox / source.name))
    name = f"{source.stem}-mirror{turn}.jpg"
    staged = inbox.parent / name  # then renamed: the agent never sees half a file
    with Image.open(source) as image:
        image.transpose(MIRRORS[turn - 1]).save(staged, quality=95)
    return staged.replace(inbox / name)


def spooled(config: EdgeConfig) -> int:
    return len(list((config.state_dir / "spool" / "entries").glob("*.entry")))


def raw_keys(store: StoreSettings) -> list[str]:
    return list(open_store(store).list("raw/"))


@contextmanager
def running(agent: Agent) -> Iterator[list[AgentStats]]:
    """The agent in a thread; its final stats land in the yielded list after the block."""
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=60)), daemon=True)
    thread.start()
    try:
        yield out
    finally:
        agent.stop()
        thread.join(20)


# ------------------------------------------------------------------ services down


def test_broker_down_inspection_goes_on_and_it_reconnects(
    own_broker: MosquittoProcess, tmp_path: Path
) -> None:
    # given an agent on the simulated camera, its own broker, results observed
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "interval_s": 0.02}
    config = make_config(
        tmp_path, own_broker.url, store, "cam-brk", source=source, feedback={"enabled": False}
    )
    agent = Agent(config, initial_model=blank_model(tmp_path))
    with running(agent):
        first = Listener(own_broker.url, results_topic("cam-brk"))
        wait_until(lambda: len(first.on(results_topic("cam-brk"))) >= 3, what="results")
        # when the broker is killed for a second and a half
        own_broker.kill()
        during = agent.stats().frames_inferred
        time.sleep(1.5)
        # then inspection went on without it
        assert agent.stats().frames_inferred > during + 5
        # and once the broker is back, the agent reconnects and results flow again
        own_broker.up()
        second = Listener(own_broker.url, results_topic("cam-brk"))
        wait_until(lambda: len(second.on(results_topic("cam-brk"))) >= 3, what="results again")
        second.close()
    published = [InferenceResult.from_json(p) for p in second.on(results_topic("cam-brk"))]
    assert all(r.device_id == "cam-brk" for r in published)


def test_store_down_spool_grows_then_drains_each_image_once(
    own_s3: MotoProcess, mqtt_url: str, metal_tags: Path, tmp_path: Path
) -> None:
    # given an object store that was up and is killed before any upload
    own_s3.up()
    own_s3.kill()
    store = own_s3.settings("raw-drain")
    config = make_config(tmp_path, mqtt_url, store, "cam-s3down", feedback=FAST)
    agent = Agent(config, initial_model=blank_model(tmp_path))
    with running(agent) as out:
        # when six hard frames come while it is down
        frames = copy_frames(metal_tags, tmp_path / "inbox", 6)
        wait_until(lambda: agent.stats().frames_inferred == 6, what="six frames inferred")
        # then they all wait in the spool (inspection did not wait for the store)
        wait_until(lambda: spooled(config) == 6, what="six spooled")
        assert agent.stats().feedback_images == 0
        # and when the store is back, the spool drains
        own_s3.up()
        wait_until(lambda: spooled(config) == 0, what="the spool drained")
    (stats,) = out
    # and every image is in the store exactly once, with its sidecar
    keys = raw_keys(store)
    assert len([k for k in keys if k.endswith(".jpg")]) == len(frames) == 6
    assert len([k for k in keys if k.endswith(".json")]) == 6
    assert (stats.feedback_images, stats.feedback_spooled, stats.feedback_dropped) == (6, 6, 0)


def agent_process(config: Path, model: Path | None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    command += ["--model", str(model)] if model is not None else []
    return subprocess.Popen(
        [*command, "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_during_uploads_then_restart_loses_and_duplicates_nothing(
    own_s3: MotoProcess, mqtt_url: str, metal_tags: Path, tmp_path: Path
) -> None:
    # given an agent process that spooled 30 hard frames while the store was down
    store = own_s3.settings("raw-kill9")
    backoff = "backoff_initial_s = 0.1\nbackoff_max_s = 0.3\nstore_timeout_s = 2.0"
    config = write_toml(
        tmp_path,
        "cam-kill9",
        mqtt_url,
        source=f'kind = "folder"\npath = "{tmp_path / "inbox"}"\npoll_interval_s = 0.05',
        store=store,
        sections=f"[feedback]\n{backoff}",
    )
    model = blank_model(tmp_path)
    frames = copy_frames(metal_tags, tmp_path / "inbox", 30)
    entries = tmp_path / "state" / "spool" / "entries"
    proc = agent_process(config, model)
    try:
        wait_until(lambda: len(list(entries.glob("*.entry"))) == 30, what="30 spooled")
        # when the store comes up and the agent is killed -9 in the middle of the uploads
        own_s3.up()
        wait_until(lambda: len(raw_keys(store)) >= 2, timeout=20, what="first uploads")
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    left = len(list(entries.glob("*.entry")))
    # and a new agent process starts on the same state
    again = agent_process(config, model)
    try:
        wait_until(lambda: not list(entries.glob("*.entry")), timeout=20, what="spool resumed")
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=20)
    # then every frame is in the store exactly once, with its sidecar; nothing left, nothing lost
    keys = raw_keys(store)
    images = sorted(k for k in keys if k.endswith(".jpg"))
    assert len(images) == len(set(images)) == len(frames) == 30
    assert len([k for k in keys if k.endswith(".json")]) == 30
    assert 0 < left < 30, f"{left} entries left: the kill did not land during the uploads"
    assert again.returncode == 0


def test_a_full_spool_drops_and_counts(mqtt_url: str, metal_tags: Path, tmp_path: Path) -> None:
    # given a store that is down and a spool that holds about two frames
    frames = copy_frames(metal_tags, tmp_path / "inbox", 5)
    size = max(p.stat().st_size for p in frames)
    store = MotoProcess().settings("raw-full")  # nobody listens on its port
    feedback = {**FAST, "spool_max_bytes": 2 * size + 4096, "drain_timeout_s": 0.2}
    config = make_config(tmp_path, mqtt_url, store, "cam-full", feedback=feedback)
    agent = Agent(config, initial_model=blank_model(tmp_path))
    with running(agent) as out:
        wait_until(lambda: agent.stats().frames_inferred == 5, what="five frames")
    # then all five were inferred, three dropped (oldest first), two kept for later
    (stats,) = out
    assert (stats.feedback_dropped, stats.feedback_spooled) == (3, 5)
    assert spooled(config) == 2 and stats.frames_inferred == 5


# ------------------------------------------------------------------ bad releases and files


@pytest.fixture
def keyed(tmp_path: Path, mqtt_url: str) -> tuple[EdgeConfig, Path]:
    """A config trusting a fresh release key, and the private key file."""
    key, pub = generate_keypair(tmp_path / "keys")
    store = StoreSettings(kind="local", path=tmp_path / "store")
    device = "cam-" + tmp_path.name[-12:].strip("_").replace("_", "-")
    config = make_config(
        tmp_path,
        mqtt_url,
        store,
        device,
        source={"kind": "simulated", "interval_s": 0.05},
        feedback={"enabled": False},
        release={"public_key": pub, "max_payload_bytes": 8192, **FAST_TRIAL},
    )
    return config, key


def publish_signed(mqtt_url: str, config: EdgeConfig, release: ReleaseMessage, key: Path) -> None:
    publish(mqtt_url, config.fleet, signed(release, key))


@contextmanager
def serving_v1(
    keyed: tuple[EdgeConfig, Path], mqtt_url: str, tmp_path: Path
) -> Iterator[tuple[Agent, list[AgentStats]]]:
    """A running agent serving a signed v1; its final stats in the list after the block."""
    config, key = keyed
    publish_signed(mqtt_url, config, release_for(blank_model(tmp_path, 1), config.fleet), key)
    agent = Agent(config)
    with running(agent) as out:
        wait_until(lambda: agent.serving_model == V1, what="v1 served")
        yield agent, out


def still_v1(agent: Agent, refused: int) -> None:
    wait_until(lambda: agent.stats().releases_refused == refused, what=f"{refused} refusals")
    frames = agent.stats().frames_inferred
    wait_until(lambda: agent.stats().frames_inferred > frames + 2, what="inspection going on")
    assert agent.serving_model == V1


def test_corrupted_model_bytes_are_refused(
    keyed: tuple[EdgeConfig, Path], mqtt_url: str, tmp_path: Path
) -> None:
    config, key = keyed
    with serving_v1(keyed, mqtt_url, tmp_path) as (agent, out):
        # a signed release whose file is damaged in transit (sha256 says otherwise)
        good = blank_model(tmp_path, 2)
        sha = release_for(good, config.fleet, version="2").sha256
        good.write_bytes(good.read_bytes()[:-8] + b"\0" * 8)
        damaged = release_for(good, config.fleet, version="2", sha256=sha)
        publish_signed(mqtt_url, config, damaged, key)
        still_v1(agent, 1)
        # and a signed release of garbage bytes whose sha256 matches them
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(os.urandom(4096))
        publish_signed(mqtt_url, config, release_for(garbage, config.fleet, version="3"), key)
        still_v1(agent, 2)
    (stats,) = out
    assert stats.serving_model == V1 and stats.swaps == 1
    assert [m.release.model.version for m in read_history(config.model_dir)] == ["1"]


def test_bad_signatures_are_refused(
    keyed: tuple[EdgeConfig, Path], mqtt_url: str, tmp_path: Path
) -> None:
    config, key = keyed
    stranger, _ = generate_keypair(tmp_path / "stranger")
    with serving_v1(keyed, mqtt_url, tmp_path) as (agent, _):
        v2 = release_for(blank_model(tmp_path, 2), config.fleet, version="2")
        publish(mqtt_url, config.fleet, signed(v2, stranger))
        still_v1(agent, 1)
        forged = tampered(signed(v2, key), released_by="mallory")
        publish(mqtt_url, config.fleet, forged)
        still_v1(agent, 2)
        publish_signed(mqtt_url, config, v2, key)  # the real one swaps in
        wait_until(lambda: agent.serving_model == v2.model, what="v2 served")


def test_a_model_with_the_wrong_input_shape_fails_its_smoke_test(
    keyed: tuple[EdgeConfig, Path], mqtt_url: str, tmp_path: Path
) -> None:
    config, key = keyed
    with serving_v1(keyed, mqtt_url, tmp_path) as (agent, out):
        # a 256x256 model released as 320, and one whose output has 2 classes for 80 names
        small = make_constant_model(tmp_path / "small.onnx", np.zeros((1, 84, 10)), imgsz=256)
        narrow = make_constant_model(tmp_path / "narrow.onnx", np.zeros((1, 6, 10)))
        for version, path in (("2", small), ("3", narrow)):
            publish_signed(mqtt_url, config, release_for(path, config.fleet, version=version), key)
            still_v1(agent, int(version) - 1)
    (stats,) = out
    assert (stats.serving_model, stats.swaps, stats.releases_refused) == (V1, 1, 2)
    (good,) = read_history(config.model_dir)
    assert good.release.model == V1  # and the refused files are gone from the disk
    assert [p.name for p in config.model_dir.glob("*.onnx")] == [good.file]


def test_malformed_oversized_and_unsigned_payloads_are_refused(
    keyed: tuple[EdgeConfig, Path], mqtt_url: str, tmp_path: Path
) -> None:
    config, key = keyed
    settings = MqttSettings(url=mqtt_url)
    device_topic = device_release_topic(config.device_id)
    v2 = release_for(blank_model(tmp_path, 2), config.fleet, version="2")
    bad_payloads = [
        b"\xff\xfe not json",
        b'{"fleet": "' + config.fleet.encode() + b'", "model": "v9"}',
        b"[]",
        signed(v2.model_copy(update={"released_by": "x" * 9000}), key),
        unsigned(v2),
    ]
    with serving_v1(keyed, mqtt_url, tmp_path) as (agent, out):
        for n, payload in enumerate(bad_payloads, start=1):
            publish_retained(settings, device_topic, payload)  # the override topic too
            still_v1(agent, n)
        publish_retained(settings, device_topic, b"")
    (stats,) = out
    assert stats.serving_model == V1 and stats.releases_refused == len(bad_payloads)


def test_non_images_in_the_hot_folder_are_set_aside(
    mqtt_url: str, metal_tags: Path, tmp_path: Path
) -> None:
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, mqtt_url, store, "cam-junk", feedback={"enabled": False})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "notes.txt").write_text("not an image")
    first = sorted((metal_tags / "images").glob("*.jpg"))[0]
    (inbox / "truncated.jpg").write_bytes(first.read_bytes()[:200])
    (inbox / "zeros.png").write_bytes(b"\0" * 1000)
    copy_frames(metal_tags, inbox, 2)
    stats = Agent(config, initial_model=blank_model(tmp_path)).run(max_frames=2, timeout_s=20)
    assert stats.frames_inferred == 2 and stats.errors == 3
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == [
        "notes.txt",
        "truncated.jpg",
        "zeros.png",
    ]


# ------------------------------------------------------------------ a model that kills the agent


def states(listener: Listener, device: str) -> list[DeviceState]:
    return [DeviceState.model_validate_json(p) for p in listener.on(state_topic(device)) if p]


def serving_state(listener: Listener, device: str, version: str, refused: int) -> bool:
    """A heartbeat of a running agent serving ``version`` with ``refused`` refusals."""
    return any(
        s.status == "serving"
        and s.model is not None
        and s.model.version == version
        and s.releases_refused == refused
        for s in states(listener, device)
    )


def stopped(proc: subprocess.Popen[str]) -> tuple[AgentStats, list[dict[str, object]]]:
    """SIGTERM, then the agent's final stats (stdout) and its JSON log lines (stderr)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return AgentStats.model_validate_json(out.strip().splitlines()[-1]), logs


def messages(logs: list[dict[str, object]], msg: str) -> list[dict[str, object]]:
    return [line for line in logs if line["msg"] == msg]


def test_a_model_that_takes_the_agent_down_on_trial_is_rejected_and_never_loaded_again(
    mqtt_url: str, tmp_path: Path
) -> None:
    # given an agent process (simulated camera) with a short trial, serving A, promoted
    device = "cam-trial"
    fleet = f"{device}-fleet"
    release = f'[release]\npublic_key = "{release_keys()[1]}"\ntrial_frames = 3\ntrial_s = 4.0'
    config = write_toml(
        tmp_path,
        device,
        mqtt_url,
        source='kind = "simulated"\ninterval_s = 0.05',
        top="state_interval_s = 0.3",
        sections=f"[feedback]\nenabled = false\n{release}",
    )
    models = tmp_path / "models"
    a, b, c = (release_for(blank_model(tmp_path, n), fleet, version=str(n)) for n in (1, 2, 3))
    publish(mqtt_url, fleet, a)
    results = Listener(mqtt_url, results_topic(device))
    proc = agent_process(config, None)
    try:
        wait_until(
            lambda: [m.release.sha256 for m in read_history(models)] == [a.sha256],
            timeout=30,
            what="A served and promoted",
        )
        # when B is released, swapped in and inspects, and the agent is killed -9 before B
        # is promoted (as a crash of onnxruntime or the OOM killer on B's first frames)
        publish(mqtt_url, fleet, b)
        wait_until(
            lambda: any(
                InferenceResult.from_json(p).model.version == "2"
                for p in results.on(results_topic(device))
            ),
            what="B inspecting",
        )
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        results.close()
    on_trial = TrialRecord.model_validate_json((tmp_path / "state" / TRIAL_FILE).read_bytes())
    assert (on_trial.sha256, on_trial.version, on_trial.sequence) == (b.sha256, "2", 2)
    assert [m.release.sha256 for m in read_history(models)] == [a.sha256]  # B never good
    b_file = models / on_trial.file
    assert b_file.is_file()

    # then after a restart (B's release still retained) it serves A and refuses B, counted
    heartbeat = Listener(mqtt_url, state_topic(device))
    again = agent_process(config, None)
    try:
        wait_until(
            lambda: serving_state(heartbeat, device, "1", 1), timeout=30, what="A served, B refused"
        )
    finally:
        stats, logs = stopped(again)
        heartbeat.close()
    assert (stats.serving_model, stats.swaps, stats.releases_refused) == (V1, 0, 1)
    assert stats.models_rejected == 1
    (rejection,) = messages(
        logs, "model on trial when the agent stopped: rejected, the last good model serves"
    )
    assert rejection["sha256"] == b.sha256
    (refusal,) = messages(logs, "release of a rejected model refused, keeping the current model")
    assert CRASHED in str(refusal["error"]) and b.sha256[:12] in str(refusal["error"])
    entries = RejectedList.model_validate_json((tmp_path / "state" / REJECTED_FILE).read_bytes())
    assert [(m.sha256, m.version, m.reason) for m in entries.models] == [(b.sha256, "2", CRASHED)]
    assert not (tmp_path / "state" / TRIAL_FILE).exists() and not b_file.exists()
    # and its heartbeat says what was rejected, when and why
    last = [s for s in states(heartbeat, device) if s.status == "serving"][-1]
    assert last.model_last_rejected is not None and last.models_rejected == 1
    assert b.sha256[:12] in last.model_last_rejected and CRASHED in last.model_last_rejected
    assert last.model_on_trial_since is None  # A is good

    # and after one more restart it still serves A and never loads B; a release of C is taken
    heartbeat = Listener(mqtt_url, state_topic(device))
    third = agent_process(config, None)
    try:
        wait_until(
            lambda: serving_state(heartbeat, device, "1", 1),
            timeout=30,
            what="A served, B refused again",
        )
        publish(mqtt_url, fleet, c)
        wait_until(lambda: serving_state(heartbeat, device, "3", 1), timeout=30, what="C served")
    finally:
        stats, logs = stopped(third)
        heartbeat.close()
    assert stats.serving_model == ModelRef(name="scratch-detector", version="3")
    assert (stats.swaps, stats.releases_refused, stats.models_rejected) == (1, 1, 0)
    served = [line["version"] for line in messages(logs, "serving model")]
    assert served == ["1", "3"]  # B was never loaded
    assert not [line for line in messages(logs, "release received") if line["version"] == "2"]

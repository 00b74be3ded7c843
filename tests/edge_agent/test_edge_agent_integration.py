"""The agent against a real broker (mosquitto) and real stores (S3 endpoint, local folder)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.stats import AgentStats
from qcloop.contracts import InferenceResult, ModelRef, Thresholds
from qcloop.devices import DeviceState
from qcloop.mqtt import results_topic, state_topic
from qcloop.settings import StoreSettings
from qcloop.storage import list_raw_images, open_store, sha256_file
from tests.edge_agent.edge_helpers import (
    Listener,
    make_config,
    publish,
    release_for,
    wait_until,
    write_toml,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

V1 = ModelRef(name="scratch-detector", version="1")
V2 = ModelRef(name="scratch-detector", version="2")
ROOT = Path(__file__).resolve().parents[2]


def results(listener: Listener, device_id: str) -> list[InferenceResult]:
    return [InferenceResult.from_json(p) for p in listener.on(results_topic(device_id))]


def start(agent: Agent, timeout_s: float) -> tuple[threading.Thread, list[AgentStats]]:
    """Run the agent in a thread; its stats land in the returned list."""
    out: list[AgentStats] = []
    thread = threading.Thread(
        target=lambda: out.append(agent.run(timeout_s=timeout_s)), daemon=True
    )
    thread.start()
    return thread, out


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """The raw store: a local folder, or a bucket on the real S3 endpoint."""
    if request.param == "local":
        return StoreSettings(kind="local", path=tmp_path / "store")
    return request.getfixturevalue("s3_store_settings")


def test_release_download_serve_infer_and_feedback(
    store: StoreSettings,
    mqtt_url: str,
    yolo_onnx: Path,
    tag_images: list[Path],
    tmp_path: Path,
    listen: Callable[[str], Listener],
    request: pytest.FixtureRequest,
) -> None:
    # given a retained release (file:// URL), three real frames and a non-image in the hot folder
    device = f"cam-{store.kind}"
    config = make_config(tmp_path, mqtt_url, store, device)
    publish(mqtt_url, config.fleet, release_for(yolo_onnx, config.fleet))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "readme.txt").write_text("not an image")  # oldest: handed out first
    for image in tag_images:
        shutil.copy(image, inbox)
    listener = listen(f"qcloop/devices/{device}/#")
    # when the agent runs until it has inferred the three frames
    stats = Agent(config).run(max_frames=3, timeout_s=30)
    # then it served the released model, verified on disk
    assert stats.serving_model == V1 and stats.swaps == 1
    assert stats.frames_inferred == 3
    (downloaded,) = (tmp_path / "models").glob("*.onnx")
    assert sha256_file(downloaded) == sha256_file(yolo_onnx)
    # and published one result per frame
    published = results(listener, device)
    assert sorted(r.image for r in published) == sorted(p.name for p in tag_images)
    assert all(r.model == V1 and r.device_id == device for r in published)
    # and the untrained model is unsure of every frame: all three went back with sidecars
    assert stats.feedback_images == 3
    sidecars = list_raw_images(open_store(store))
    assert sorted(str(s.original_name) for s in sidecars) == sorted(p.name for p in tag_images)
    for sidecar in sidecars:
        assert (sidecar.reason, sidecar.device_id, sidecar.model) == ("low_confidence", device, V1)
        assert (sidecar.width, sidecar.height) == (450, 300)
    assert {r.feedback_key for r in published} == {s.key for s in sidecars}
    # and the frames were moved, the text file set aside (one error), nothing crashed
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == sorted(
        p.name for p in tag_images
    )
    assert (inbox / "rejected" / "readme.txt").is_file() and stats.errors == 1
    # and the retained state ends offline, naming the model
    states = [DeviceState.model_validate_json(p) for p in listener.on(state_topic(device))]
    assert [s.status for s in states][:2] == ["starting", "waiting_for_model"]
    assert "serving" in [s.status for s in states]
    assert states[-1].status == "offline" and states[-1].model == V1


def test_a_sha256_mismatch_is_refused_and_the_old_model_keeps_serving(
    mqtt_url: str,
    yolo_onnx: Path,
    tag_images: list[Path],
    tmp_path: Path,
    listen: Callable[[str], Listener],
) -> None:
    # given an agent serving v1
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, mqtt_url, store, "cam-sha")
    publish(mqtt_url, config.fleet, release_for(yolo_onnx, config.fleet))
    listener = listen(results_topic("cam-sha"))
    agent = Agent(config)
    thread, out = start(agent, timeout_s=30)
    wait_until(lambda: agent.serving_model == V1, what="v1 served")
    # when v2 is released with a sha256 that does not match its file
    bad = release_for(yolo_onnx, config.fleet, version="2", sha256="0" * 64)
    publish(mqtt_url, config.fleet, bad)
    wait_until(lambda: agent.stats().errors == 1, what="the refusal")
    # and frames arrive
    for image in tag_images[:2]:
        shutil.copy(image, tmp_path / "inbox")
    wait_until(lambda: agent.stats().frames_inferred == 2, what="two frames")
    agent.stop()
    thread.join(10)
    # then v1 kept serving those frames, and nothing of v2 was kept
    (stats,) = out
    assert stats.serving_model == V1 and stats.swaps == 1 and stats.errors == 1
    assert [r.model for r in results(listener, "cam-sha")] == [V1, V1]
    assert [p.name for p in (tmp_path / "models").rglob("*.onnx")] == [
        f"scratch-detector-1-{sha256_file(yolo_onnx)[:12]}.onnx"
    ]


def test_malformed_releases_are_ignored_and_a_new_one_swaps_in(
    mqtt_url: str, yolo_onnx: Path, tag_images: list[Path], tmp_path: Path
) -> None:
    # given an agent serving v1, with no frame to feed back (feedback_below 0)
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, mqtt_url, store, "cam-bad")
    quiet = Thresholds(feedback_below=0.0)
    publish(mqtt_url, config.fleet, release_for(yolo_onnx, config.fleet, thresholds=quiet))
    agent = Agent(config)
    thread, out = start(agent, timeout_s=30)
    wait_until(lambda: agent.serving_model == V1, what="v1 served")
    # when garbage and a contract-breaking release come, then a valid v2
    publish(mqtt_url, config.fleet, b"\xff{not json")
    publish(mqtt_url, config.fleet, json.dumps({"fleet": config.fleet, "model": "v3"}))
    wait_until(lambda: agent.stats().errors == 2, what="two ignored payloads")
    assert agent.serving_model == V1
    v2 = release_for(yolo_onnx, config.fleet, version="2", thresholds=quiet)
    publish(mqtt_url, config.fleet, v2)
    wait_until(lambda: agent.serving_model == V2, what="v2 swapped in")
    shutil.copy(tag_images[0], tmp_path / "inbox")
    wait_until(lambda: agent.stats().frames_inferred == 1, what="one frame")
    agent.stop()
    thread.join(10)
    # then v2 serves, two swaps, and feedback_below 0 from the release sent nothing back
    (stats,) = out
    assert (stats.serving_model, stats.swaps, stats.errors) == (V2, 2, 2)
    assert stats.feedback_images == 0 and not (tmp_path / "store").exists()


def test_an_unreachable_store_does_not_stop_inference(
    mqtt_url: str,
    yolo_onnx: Path,
    tag_images: list[Path],
    tmp_path: Path,
    listen: Callable[[str], Listener],
) -> None:
    # given an S3 store on a port where nothing listens
    store = StoreSettings.model_validate(
        {
            "kind": "s3",
            "endpoint": f"http://127.0.0.1:{free_port()}",
            "bucket": "raw",
            "access_key": "k",
            "secret_key": "s",
        }
    )
    config = make_config(
        tmp_path, mqtt_url, store, "cam-nostore", feedback={"drain_timeout_s": 0.5}
    )
    publish(mqtt_url, config.fleet, release_for(yolo_onnx, config.fleet))
    (tmp_path / "inbox").mkdir()
    for image in tag_images:
        shutil.copy(image, tmp_path / "inbox")
    listener = listen(results_topic("cam-nostore"))
    # when the agent runs over three frames that all want feedback
    stats = Agent(config).run(max_frames=3, timeout_s=30)
    # then all three were inferred and published; uploads failed, counted, not fatal
    assert stats.frames_inferred == 3 and len(results(listener, "cam-nostore")) == 3
    assert stats.feedback_images == 0 and stats.errors >= 1


def test_simulated_camera_with_a_local_model(
    mqtt_url: str, yolo_onnx: Path, tmp_path: Path
) -> None:
    # given no release at all, a --model and the simulated camera
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "seed": 5, "interval_s": 0.0}
    config = make_config(tmp_path, mqtt_url, store, "cam-sim", source=source)
    # when run for three frames
    stats = Agent(config, initial_model=yolo_onnx).run(max_frames=3, timeout_s=30)
    # then the local model served them and every (distinct) frame went back
    assert stats.serving_model == ModelRef(name=yolo_onnx.stem, version="local")
    assert (stats.frames_inferred, stats.swaps, stats.errors) == (3, 0, 0)
    assert stats.feedback_images == 3 and len(list_raw_images(open_store(store))) == 3


def test_without_a_model_frames_wait(mqtt_url: str, tag_images: list[Path], tmp_path: Path) -> None:
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(tmp_path, mqtt_url, store, "cam-wait")
    (tmp_path / "inbox").mkdir()
    shutil.copy(tag_images[0], tmp_path / "inbox")
    stats = Agent(config).run(timeout_s=0.5)
    assert stats.frames_inferred == 0 and stats.serving_model is None
    assert (tmp_path / "inbox" / tag_images[0].name).is_file()  # not consumed


def test_cli_run_prints_and_writes_the_stats(
    mqtt_url: str,
    yolo_onnx: Path,
    tag_images: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a config file, a retained release and two frames
    source = f'kind = "folder"\npath = "{tmp_path / "inbox"}"\npoll_interval_s = 0.05'
    config = write_toml(tmp_path, "cam-cli", mqtt_url, source=source)
    publish(mqtt_url, "cam-cli-fleet", release_for(yolo_onnx, "cam-cli-fleet"))
    (tmp_path / "inbox").mkdir()
    for image in tag_images[:2]:
        shutil.copy(image, tmp_path / "inbox")
    stats_file = tmp_path / "stats.json"
    # when run from the command line
    argv = ["run", "--config", str(config), "--max-frames", "2", "--timeout", "30"]
    rc = main([*argv, "--stats-out", str(stats_file)])
    # then the stats are printed (last line of stdout) and written
    assert rc == 0
    printed = AgentStats.model_validate_json(capsys.readouterr().out.splitlines()[-1])
    assert printed == AgentStats.model_validate_json(stats_file.read_text())
    assert (printed.frames_inferred, printed.serving_model) == (2, V1)


def test_sigterm_stops_the_agent_cleanly(
    mqtt_url: str, yolo_onnx: Path, tmp_path: Path, listen: Callable[[str], Listener]
) -> None:
    # given the agent as a process on the simulated camera with a local model
    source = 'kind = "simulated"\ninterval_s = 0.1'
    config = write_toml(tmp_path, "cam-term", mqtt_url, source=source)
    listener = listen(results_topic("cam-term"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--model", str(yolo_onnx)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(listener.on(results_topic("cam-term"))) >= 2, what="results")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    # then it exits 0, prints its stats, and logged JSON lines to stderr
    assert proc.returncode == 0, err
    stats = AgentStats.model_validate_json(out.strip().splitlines()[-1])
    assert stats.frames_inferred >= 2
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "agent stopped" for entry in logs)

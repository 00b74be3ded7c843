"""Heartbeat on the retained state topic, and ``qcloop-edge status`` reading it back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.stats import AgentStats, Throughput
from qcloop.devices import DeviceState
from qcloop.mqtt import state_topic
from tests.edge_agent.edge_helpers import Listener, wait_until, write_toml
from tests.services import free_port


def test_throughput_reads_fps_and_latencies() -> None:
    window = Throughput(size=3)
    assert window.read()[1:] == (None, None)
    for latency in (10.0, 20.0, 30.0, 40.0):
        window.add(latency)
    fps, p50, p95 = window.read()
    assert fps > 0 and (p50, p95) == (30.0, 40.0)  # only the last three are kept


def write_config(tmp_path: Path, mqtt_url: str, device: str) -> Path:
    source = 'kind = "simulated"\ninterval_s = 0.05'
    return write_toml(tmp_path, device, mqtt_url, source=source, top="state_interval_s = 0.3")


@pytest.mark.integration
def test_heartbeat_carries_model_fps_latency_spool_and_disk(
    mqtt_url: str,
    yolo_onnx: Path,
    tmp_path: Path,
    listen: Callable[[str], Listener],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given an agent on the simulated camera with a 0.3 s heartbeat
    config_file = write_config(tmp_path, mqtt_url, "cam-beat")
    listener = listen(state_topic("cam-beat"))
    agent = Agent(load_config(config_file, environ={}), initial_model=yolo_onnx)
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=30)), daemon=True)
    thread.start()

    def beats() -> list[DeviceState]:
        states = [DeviceState.model_validate_json(p) for p in listener.on(state_topic("cam-beat"))]
        return [s for s in states if s.status == "serving" and s.frames > 0]

    try:
        # when a few heartbeats went by
        wait_until(lambda: len(beats()) >= 2, what="two heartbeats while serving")
        # then they carry the model, fps, latency percentiles, spool and disk
        beat = beats()[-1]
        assert beat.model is not None and beat.model.name == yolo_onnx.stem
        assert beat.fps > 0 and beat.latency_p50_ms is not None and beat.latency_p95_ms is not None
        assert 0 < beat.latency_p50_ms <= beat.latency_p95_ms
        assert beat.disk_free_bytes is not None and beat.disk_free_bytes > 0
        assert beat.spool_depth >= 0 and beat.spool_bytes >= 0
        # and `qcloop-edge status` reads the retained one back
        assert main(["status", "--config", str(config_file), "--json"]) == 0
        printed = DeviceState.model_validate_json(capsys.readouterr().out)
        assert printed.device_id == "cam-beat" and printed.status == "serving"
        assert main(["status", "--config", str(config_file)]) == 0
        table = capsys.readouterr().out
        assert "latency p50/p95:" in table and yolo_onnx.stem in table
    finally:
        agent.stop()
        thread.join(15)


@pytest.mark.integration
def test_status_without_state_or_broker_exits_1(
    mqtt_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_config(tmp_path, mqtt_url, "cam-never-seen")
    assert main(["status", "--config", str(config_file), "--timeout", "0.5"]) == 1
    assert "cam-never-seen" in capsys.readouterr().err
    dead = write_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}", "cam-x")
    assert main(["status", "--config", str(dead)]) == 1
    assert "unreachable" in capsys.readouterr().err

"""Operator verdicts: the ring of recent frames, payload validation, and the MQTT round trip."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import VerdictConfig
from edge_agent.stats import AgentStats, Counters
from edge_agent.verdicts import RecentFrame, RecentFrames, VerdictInbox, parse_verdict
from qcloop.contracts import Thresholds
from qcloop.devices import DeviceState
from qcloop.mqtt import connect, make_client, state_topic, verdict_topic
from qcloop.settings import MqttSettings, StoreSettings
from qcloop.storage import list_raw_images, open_store, sha256_bytes
from tests.edge_agent.edge_helpers import (
    Listener,
    make_config,
    make_constant_model,
    wait_until,
    write_toml,
)
from tests.services import free_port


def frame(name: str, size: int = 10) -> RecentFrame:
    data = name.encode().ljust(size, b"x")
    return RecentFrame(name, sha256_bytes(data), data, [], None)


def test_recent_frames_are_bounded_by_count_and_bytes() -> None:
    ring = RecentFrames(max_frames=3, max_bytes=25)
    for name in ("a", "b", "c"):
        ring.add(frame(name))
    assert len(ring) == 2 and ring.find("a") is None  # 30 bytes > 25: the oldest went
    ring = RecentFrames(max_frames=2, max_bytes=1000)
    for name in ("a", "b", "c"):
        ring.add(frame(name))
    assert ring.find("a") is None and ring.find("c") is not None
    newest = frame("c")
    assert ring.find(newest.sha256) == newest  # by sha256 too


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"frame": "a.jpg", "verdict": "maybe"}',
        b'{"frame": "", "verdict": "false_alarm"}',
        b'{"frame": "a.jpg", "verdict": "false_alarm", "extra": 1}',
        b'{"frame": "a.jpg", "verdict": "false_alarm", "by": "a:b"}',
        json.dumps({"frame": "a.jpg", "verdict": "false_alarm", "note": "x" * 5000}).encode(),
    ],
)
def test_malformed_or_oversized_verdicts_are_ignored_with_a_log_line(
    payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent")
    assert parse_verdict(payload, max_bytes=4096) is None
    assert "verdict ignored" in caplog.text


def test_a_verdict_on_a_forgotten_frame_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = Counters()
    inbox = VerdictInbox(VerdictConfig(buffer_frames=5), counters, "cam")
    inbox.receive(b'{"frame": "gone.jpg", "verdict": "missed_defect"}')
    caplog.set_level(logging.WARNING, logger="edge_agent")
    inbox.drain(feedback=None)  # type: ignore[arg-type]  # never reached for an unknown frame
    assert counters.get("verdicts_unknown_frame") == 1
    assert "not in the last 5 frames" in caplog.text


def start(agent: Agent) -> tuple[threading.Thread, list[AgentStats]]:
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=30)), daemon=True)
    thread.start()
    return thread, out


def publish_raw(mqtt_url: str, topic: str, payload: bytes) -> None:
    settings = MqttSettings(url=mqtt_url)
    client = make_client(settings)
    connect(client, settings)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.mark.integration
def test_a_verdict_over_mqtt_sends_that_frame_back(
    mqtt_url: str,
    tag_images: list[Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    listen: Callable[[str], Listener],
) -> None:
    # given an agent that sends nothing back by itself (feedback_below 0, no detections)
    caplog.set_level(logging.INFO, logger="edge_agent")
    model = make_constant_model(tmp_path / "m.onnx", np.zeros((1, 84, 10), np.float32))
    store = StoreSettings(kind="local", path=tmp_path / "store")
    quiet = Thresholds(feedback_below=0.0)
    config = make_config(tmp_path, mqtt_url, store, "cam-verdict", thresholds=quiet)
    (tmp_path / "inbox").mkdir()
    for image in tag_images:
        shutil.copy(image, tmp_path / "inbox")
    listener = listen(state_topic("cam-verdict"))
    agent = Agent(config, initial_model=model)
    thread, out = start(agent)
    wait_until(lambda: agent.stats().frames_inferred == 3, what="three frames inferred")
    # when an operator flags the second frame (CLI), one unknown frame and one bad payload
    toml = write_toml(tmp_path, "cam-verdict", mqtt_url)
    argv = ["verdict", "--config", str(toml), "--frame", tag_images[1].name]
    assert main([*argv, "--verdict", "missed_defect", "--by", "alice"]) == 0
    publish_raw(
        mqtt_url, verdict_topic("cam-verdict"), b'{"frame": "nope.jpg", "verdict": "false_alarm"}'
    )
    publish_raw(mqtt_url, verdict_topic("cam-verdict"), b"{broken")
    wait_until(
        lambda: agent.stats().feedback_images == 1 and agent.stats().verdicts_ignored == 1,
        what="the flagged frame uploaded",
    )
    wait_until(lambda: agent.stats().verdicts_unknown_frame == 1, what="the unknown verdict")
    agent.stop()
    thread.join(15)
    # then exactly that frame is in the raw store, with the verdict in its sidecar
    (sidecar,) = list_raw_images(open_store(store))
    assert sidecar.sha256 == sha256_bytes(tag_images[1].read_bytes())
    assert (sidecar.reason, sidecar.source) == ("operator_verdict", "operator:alice:missed_defect")
    assert sidecar.original_name == tag_images[1].name and sidecar.device_id == "cam-verdict"
    stats = out[0]
    assert (stats.verdicts_sent, stats.verdicts_unknown_frame, stats.verdicts_ignored) == (1, 1, 1)
    assert stats.feedback_policies["band"] == {"sent": 0, "limited": 0, "deduplicated": 0}
    heartbeat = DeviceState.model_validate_json(listener.on(state_topic("cam-verdict"))[-1])
    assert set(heartbeat.feedback_policies) == {"band", "defects", "count", "random", "every"}
    assert (
        "not in the last 50 frames" in caplog.text and "verdict ignored: malformed" in caplog.text
    )


def test_cli_verdict_refuses_a_bad_name_and_an_absent_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = write_toml(tmp_path, "cam-cli-verdict", f"mqtt://127.0.0.1:{free_port()}")
    argv = ["verdict", "--config", str(toml), "--frame", "a.jpg", "--verdict", "false_alarm"]
    assert main([*argv, "--by", "a b"]) == 1
    assert "bad verdict" in capsys.readouterr().err
    assert main(argv) == 1
    assert "unreachable" in capsys.readouterr().err

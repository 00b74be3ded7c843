"""qcloop fleet: the devices' retained states on a real broker, as a table or JSON lines."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main
from qcloop.mqtt import publish_retained, state_topic
from qcloop.settings import MqttSettings

pytestmark = pytest.mark.integration


def test_fleet_lists_each_device_once(
    mqtt_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = MqttSettings(url=mqtt_url)
    serving = {
        "status": "serving",
        "device_id": "cam-a",
        "fleet": "line-9",
        "model": {"name": "det", "version": "4"},
        "since": "2026-11-26T08:00:00+00:00",
        "fps": 21.5,
        "latency_p50_ms": 41.2,
        "spool_depth": 3,
    }
    publish_retained(settings, state_topic("cam-a"), json.dumps(serving).encode())
    publish_retained(settings, state_topic("cam-b"), b'{"status": "offline", "fleet": "line-9"}')
    publish_retained(settings, state_topic("cam-c"), b"\xff not json")
    monkeypatch.setenv("QCLOOP_MQTT__URL", mqtt_url)
    assert main(["fleet", "--json"]) == 0
    found = {s["device_id"]: s for s in map(json.loads, capsys.readouterr().out.splitlines())}
    assert found["cam-a"]["model"]["version"] == "4" and found["cam-b"]["status"] == "offline"
    assert found["cam-c"]["status"] == "unreadable"
    assert main(["fleet", "--fleet", "line-9"]) == 0
    table = capsys.readouterr().out
    assert "det:4" in table and "21.5" in table and "cam-c" not in table


def test_unreachable_broker_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QCLOOP_MQTT__URL", "mqtt://127.0.0.1:9")
    assert main(["fleet"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_a_device_cannot_fake_another_or_break_the_listing(
    mqtt_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a genuine state, and three devices publishing what is not their state: one
    # claiming the genuine one's id, a JSON list, and an fps that is not a number
    settings = MqttSettings(url=mqtt_url)
    genuine = {"status": "serving", "device_id": "real-1", "fleet": "line-8", "fps": 4.0}
    fake = {**genuine, "device_id": "real-1", "fps": 99.0}
    for device, payload in [
        ("real-1", json.dumps(genuine)),
        ("fake-1", json.dumps(fake)),
        ("list-1", "[1, 2]"),
        ("text-1", json.dumps({**genuine, "device_id": "text-1", "fps": "x"})),
    ]:
        publish_retained(settings, state_topic(device), payload.encode())
    monkeypatch.setenv("QCLOOP_MQTT__URL", mqtt_url)
    # when the fleet is listed as JSON and as a table
    assert main(["fleet", "--json"]) == 0
    rows = {s["device_id"]: s for s in map(json.loads, capsys.readouterr().out.splitlines())}
    assert main(["fleet"]) == 0
    table = capsys.readouterr().out
    # then each row is the topic's device; what is not a state is unreadable, with the reason
    assert rows["real-1"]["fps"] == 4.0 and rows["real-1"]["fleet"] == "line-8"
    assert rows["fake-1"]["status"] == "unreadable" and "real-1" in rows["fake-1"]["error"]
    assert rows["list-1"]["status"] == "unreadable" and "not an object" in rows["list-1"]["error"]
    assert rows["text-1"]["status"] == "unreadable" and "fps" in rows["text-1"]["error"]
    assert "text-1: unreadable state: fps" in table and "99.0" not in table

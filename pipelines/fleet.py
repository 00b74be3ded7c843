"""The fleet as the platform sees it: every device's retained state on the broker.

Devices keep their state retained on ``qcloop/devices/<id>/state`` (heartbeat,
and ``offline`` as their last will), so one subscription shows which device runs
which model, and since when, without any database.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from qcloop.mqtt import ROOT, connect, make_client
from qcloop.settings import MqttSettings

STATE_FILTER = f"{ROOT}/devices/+/state"


def fleet_states(
    settings: MqttSettings, *, fleet: str | None = None, wait_s: float = 2.0, quiet_s: float = 0.5
) -> list[dict[str, Any]]:
    """Retained states of all devices (of ``fleet`` if given), sorted by device id.

    Waits until no new state arrived for ``quiet_s`` (retained messages come at
    once) or ``wait_s`` passed. A payload that is not JSON is listed as unreadable.
    """
    states: dict[str, dict[str, Any]] = {}
    last = [time.monotonic()]
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[2]
        try:
            state = json.loads(msg.payload) if msg.payload else {"status": "cleared"}
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = {"status": "unreadable"}
        with lock:
            states[device] = {"device_id": device, **state}
            last[0] = time.monotonic()

    client = make_client(settings)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(STATE_FILTER, qos=1)
    connect(client, settings)
    client.loop_start()
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    found = sorted(states.values(), key=lambda s: s["device_id"])
    return [s for s in found if fleet is None or s.get("fleet") == fleet]


def fleet_table(states: list[dict[str, Any]]) -> str:
    """A fixed-width table for people."""
    rows = [("DEVICE", "FLEET", "STATUS", "MODEL", "SINCE", "FPS", "P50 MS", "SPOOL")]
    for s in states:
        model = s.get("model") or {}
        version = f"{model.get('name')}:{model.get('version')}" if model else "-"
        p50 = s.get("latency_p50_ms")
        rows.append(
            (
                s["device_id"],
                str(s.get("fleet", "-")),
                str(s.get("status", "-")),
                version,
                str(s.get("since", "-"))[:19],
                f"{float(s.get('fps') or 0):.1f}",
                "-" if p50 is None else f"{float(p50):.1f}",
                str(s.get("spool_depth", "-")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)

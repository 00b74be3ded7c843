"""The fleet as the platform sees it: every device's retained state on the broker.

Devices keep their state retained on ``qcloop/devices/<id>/state`` (heartbeat,
and ``offline`` as their last will), so one subscription shows which device runs
which model, and since when, without any database. Each state is checked against
the ``DeviceState`` contract and keyed by the device id of its topic: a device cannot
fill another's row, and a payload that is not a state is listed as ``unreadable``
with the reason instead of breaking the listing for the whole fleet.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge_agent.stats import DeviceState
from qcloop.mqtt import ROOT, connect, make_client
from qcloop.settings import MqttSettings

STATE_FILTER = f"{ROOT}/devices/+/state"


def read_state(device: str, payload: bytes) -> dict[str, Any]:
    """The row of ``device`` (its topic's id) from its retained payload.

    A valid ``DeviceState`` comes back as JSON-able fields (those a newer agent adds are
    left out); an empty payload is ``cleared``; anything else - not JSON, not an object,
    a field of the wrong type, another device's id - is ``unreadable`` with an ``error``.
    """
    if not payload:
        return {"device_id": device, "status": "cleared"}
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        claimed = data.get("device_id", device)
        if claimed != device:
            raise ValueError(f"device_id '{str(claimed)[:64]}' is not the topic's")
        known = {k: v for k, v in data.items() if k in DeviceState.model_fields}
        state = DeviceState.model_validate({**known, "device_id": device})
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ValidationError
        return {"device_id": device, "status": "unreadable", "error": _reason(exc)}
    return state.model_dump(mode="json")


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]]
        return "; ".join(problems)
    return str(exc)[:200]


def fleet_states(
    settings: MqttSettings, *, fleet: str | None = None, wait_s: float = 2.0, quiet_s: float = 0.5
) -> list[dict[str, Any]]:
    """Retained states of all devices (of ``fleet`` if given), sorted by device id.

    Waits until no new state arrived for ``quiet_s`` (retained messages come at
    once) or ``wait_s`` passed. Each row is ``read_state``'s.
    """
    states: dict[str, dict[str, Any]] = {}
    last = [time.monotonic()]
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[2]
        state = read_state(device, bytes(msg.payload))
        with lock:
            states[device] = state
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
    """A fixed-width table for people; unreadable states are explained below it."""
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
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"{s['device_id']}: unreadable state: {s['error']}" for s in states if "error" in s]
    return "\n".join(lines + (["", *notes] if notes else []))

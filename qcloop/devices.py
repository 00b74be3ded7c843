"""What devices say about themselves, and reading it for a whole fleet.

Every edge agent keeps a ``DeviceState`` retained on ``qcloop/devices/<id>/state``
(heartbeat, and ``offline`` as its last will), so one subscription shows which device
runs which model, and since when, without any database. ``read_state`` checks each
payload against the contract and keys it by the device id of its topic: a device cannot
fill another's row, and a payload that is not a state is listed as ``unreadable`` with
the reason instead of breaking the listing for the whole fleet. The contract lives here,
on the ground floor, because the agent writes it and the platform (``qcloop fleet``, the
bridge's staged rollout) reads it.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Any, Literal

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcloop.contracts import ModelRef, utcnow
from qcloop.mqtt import ROOT, connect, make_client
from qcloop.settings import MqttSettings

__all__ = ["STATE_FILTER", "DeviceState", "Status", "fleet_states", "read_state"]

Status = Literal["starting", "waiting_for_model", "serving", "offline"]


class DeviceState(BaseModel):
    """Retained on ``qcloop/devices/<id>/state`` every heartbeat; ``offline`` is the last will."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Status
    device_id: str
    fleet: str
    model: ModelRef | None = None
    model_on_trial_since: datetime | None = Field(
        default=None, description="the model is on trial since (None: a good model, or none)"
    )
    since: datetime = Field(default_factory=utcnow, description="when this status began")
    frames: int = 0
    fps: float = Field(default=0.0, description="frames per second over the last heartbeat")
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    spool_depth: int = Field(default=0, description="feedback images waiting for upload")
    spool_bytes: int = 0
    disk_free_bytes: int | None = Field(default=None, description="free space of the state dir")
    releases_refused: int = Field(default=0, description="invalid, untrusted or broken releases")
    release_last_error: str | None = Field(
        default=None, description="why the last release was refused (or failed to download)"
    )
    models_rejected: int = Field(default=0, description="models rejected since the agent started")
    model_last_rejected: str | None = Field(
        default=None, description="the model this device rejected last, when and why"
    )
    upload_failures: int = Field(default=0, description="failed uploads to the store (retried)")
    frames_rejected: int = Field(default=0, description="frames set aside to rejected/")
    mqtt_dropped: int = Field(default=0, description="MQTT messages dropped: queue full")
    errors: int = Field(default=0, description="every failure, all kinds together")
    feedback_policies: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per policy: sent, limited, deduplicated"
    )
    updated_at: datetime = Field(default_factory=utcnow)


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

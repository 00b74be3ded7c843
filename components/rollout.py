"""Staged rollout: a release goes to the canary devices first, to the fleet once they are healthy.

    start_rollout: the release (sequence N) on each canary's own release topic
        --> advance_rollout, at every poll of the bridge (non-blocking): the canaries'
            retained heartbeats --> each canary waiting / healthy / failed
        --> all healthy for ``release.canary_wait_s``: stage ``fleet``; the very same
            envelope (bytes and sequence N) on the fleet topic, then the canaries' own
            topics cleared (they follow the fleet again: same bytes, nothing to install)
        --> a canary failed, or ``release.canary_timeout_s`` passed: stage ``halted``; the
            fleet's previous model released anew (sequence above N) on the canaries' own
            topics, where it stays until the next rollout; the fleet topic never sees N

A canary is healthy when its heartbeat says ``serving`` the new version, out of trial.
It has failed when it is ``offline``, rejected the new version (``model_last_rejected``),
refused a release (``releases_refused`` grew), or serves another model after it served
the new one. The state of the fleet's latest rollout is kept in the object store
(``releases/<fleet>/rollout.json``); ``qcloop fleet`` shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from components.release import claim_sequence, fleet_key, model_key, model_location, sequence_key
from qcloop.contracts import ModelRef, ReleaseEnvelope, ReleaseMessage, utcnow
from qcloop.errors import ContractError, ObjectNotFound
from qcloop.mqtt import device_release_topic, publish_retained, read_retained, release_topic
from qcloop.settings import Settings
from qcloop.signing import SealedRelease, load_private_key, unverified
from qcloop.storage import ObjectStore, open_store, released_key

log = logging.getLogger(__name__)

Stage = Literal["canary", "fleet", "halted"]
Health = Literal["waiting", "healthy", "failed"]
StatesReader = Callable[[Settings, list[str]], dict[str, dict[str, Any]]]


class CanaryHealth(BaseModel):
    """One canary in a rollout, as its last heartbeat showed it."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    health: Health = "waiting"
    note: str = "no heartbeat yet"
    healthy_since: datetime | None = None
    served_new: bool = False
    refused_before: int = 0
    rejected_before: str | None = None


class Rollout(BaseModel):
    """Content of ``releases/<fleet>/rollout.json``: where the fleet's latest release stands."""

    model_config = ConfigDict(extra="forbid")

    fleet: str
    model: ModelRef
    sequence: int
    stage: Stage = "canary"
    reason: str = ""
    previous: ModelRef | None = None
    previous_sequence: int | None = None
    rollback_sequence: int | None = None
    started_at: datetime
    updated_at: datetime
    canaries: list[CanaryHealth]

    def summary(self) -> str:
        """One line for people: the model, the stage, why."""
        head = f"rollout of {self.model.name}:{self.model.version} (#{self.sequence}) to fleet "
        text = f"{head}{self.fleet}: {self.stage}"
        if self.stage == "halted" and self.rollback_sequence is not None and self.previous:
            text += f", canaries back on {self.previous.version} (#{self.rollback_sequence})"
        return text + (f" - {self.reason}" if self.reason else "")


def rollout_key(fleet: str) -> str:
    """Object-store key of the fleet's latest rollout."""
    return f"releases/{fleet}/rollout.json"


def load_rollout(store: ObjectStore, fleet: str) -> Rollout | None:
    """The fleet's latest rollout, None before the first (or unreadable, logged)."""
    try:
        return Rollout.model_validate_json(store.get_bytes(rollout_key(fleet)))
    except ObjectNotFound:
        return None
    except ValueError as exc:
        log.error("rollout state unreadable", extra={"fleet": fleet, "error": str(exc)})
        return None


def save_rollout(store: ObjectStore, rollout: Rollout) -> None:
    """Keep ``rollout`` in the object store."""
    data = rollout.model_dump_json(indent=2).encode()
    store.put_bytes(rollout_key(rollout.fleet), data, "application/json")


def canary_states(settings: Settings, devices: list[str]) -> dict[str, dict[str, Any]]:
    """The retained heartbeats of ``devices`` (``qcloop.devices.read_state`` rows)."""
    from qcloop.devices import fleet_states

    return {s["device_id"]: s for s in fleet_states(settings.mqtt) if s["device_id"] in devices}


def fleet_release(settings: Settings, store: ObjectStore, fleet: str) -> SealedRelease | None:
    """The release the fleet topic holds: as the bridge kept it, else the retained one
    if the store has the same bytes under its sequence; None if neither."""
    try:
        return unverified(ReleaseEnvelope.from_json(store.get_bytes(fleet_key(fleet))))
    except (ObjectNotFound, ContractError):
        pass
    payload = read_retained(settings.mqtt, release_topic(fleet))
    try:
        sealed = unverified(ReleaseEnvelope.from_json(payload or b""))
        if store.get_bytes(sequence_key(fleet, sealed.message.sequence)) == payload:
            return sealed
    except (ObjectNotFound, ContractError):
        pass
    return None


def start_rollout(
    settings: Settings,
    release: SealedRelease,
    *,
    now: datetime | None = None,
    read_states: StatesReader = canary_states,
) -> Rollout:
    """Publish ``release`` on each canary's own topic and record the rollout (stage canary)."""
    devices = list(settings.release.canary_devices)
    if not devices:
        raise ContractError("release.canary_devices is empty: no canary to roll out to")
    message, now = release.message, now or utcnow()
    store = open_store(settings.store)
    previous = fleet_release(settings, store, message.fleet)
    states = read_states(settings, devices)
    canaries = [
        CanaryHealth(
            device_id=d,
            refused_before=int(states.get(d, {}).get("releases_refused") or 0),
            rejected_before=states.get(d, {}).get("model_last_rejected"),
        )
        for d in devices
    ]
    rollout = Rollout(
        fleet=message.fleet,
        model=message.model,
        sequence=message.sequence,
        previous=previous.message.model if previous else None,
        previous_sequence=previous.message.sequence if previous else None,
        started_at=now,
        updated_at=now,
        canaries=canaries,
    )
    save_rollout(store, rollout)
    for device in devices:
        publish_retained(settings.mqtt, device_release_topic(device), release.payload())
    log.info("rollout started on the canaries", extra={"devices": devices, **_extra(rollout)})
    return rollout


def judge(canary: CanaryHealth, state: dict[str, Any] | None, model: ModelRef) -> CanaryHealth:
    """``canary`` after its heartbeat ``state`` (None: none yet), for the new ``model``."""
    if state is None or state.get("status") in ("cleared", "unreadable"):
        note = state.get("error", "no state") if state else "no heartbeat yet"
        return canary.model_copy(update={"health": "waiting", "note": note, "healthy_since": None})
    status, serving = state.get("status"), state.get("model") or {}
    version = serving.get("version")
    rejected = state.get("model_last_rejected")
    if status == "offline":
        return _failed(canary, "went offline")
    if rejected and rejected != canary.rejected_before:
        return _failed(canary, f"rejected a model: {rejected}")
    if int(state.get("releases_refused") or 0) > canary.refused_before:
        return _failed(canary, f"refused a release: {state.get('release_last_error')}")
    if version != model.version or serving.get("name") != model.name:
        on = f"{serving.get('name')}:{version}" if serving else "no model"
        if canary.served_new:
            return _failed(canary, f"serves {on} again after {model.version}")
        return canary.model_copy(update={"health": "waiting", "note": f"still on {on}"})
    if status != "serving" or state.get("model_on_trial_since"):
        note = (
            f"on trial since {state.get('model_on_trial_since')}" if status == "serving" else status
        )
        update = {"health": "waiting", "note": note, "healthy_since": None, "served_new": True}
        return canary.model_copy(update=update)
    return canary.model_copy(update={"health": "healthy", "note": "serving", "served_new": True})


def _failed(canary: CanaryHealth, why: str) -> CanaryHealth:
    return canary.model_copy(update={"health": "failed", "note": why[:300], "healthy_since": None})


def advance_rollout(
    settings: Settings,
    fleet: str | None = None,
    *,
    now: datetime | None = None,
    read_states: StatesReader = canary_states,
    say: Callable[[str], None] = print,
) -> Rollout | None:
    """One step of the fleet's rollout in stage canary (none: nothing to do): read the
    canaries' heartbeats, then go on waiting, promote it to the fleet, or halt it."""
    fleet = fleet or settings.mqtt.fleet
    store = open_store(settings.store)
    rollout = load_rollout(store, fleet)
    if rollout is None or rollout.stage != "canary":
        return rollout
    now = now or utcnow()
    states = read_states(settings, [c.device_id for c in rollout.canaries])
    canaries = []
    for canary in rollout.canaries:
        judged = judge(canary, states.get(canary.device_id), rollout.model)
        if judged.health == "healthy" and judged.healthy_since is None:
            judged = judged.model_copy(update={"healthy_since": now})
        canaries.append(judged)
    rollout = rollout.model_copy(update={"canaries": canaries, "updated_at": now})
    wait = timedelta(seconds=settings.release.canary_wait_s)
    failed = [c for c in canaries if c.health == "failed"]
    if failed:
        why = "; ".join(f"{c.device_id} {c.note}" for c in failed)
        rollout = halt(settings, store, rollout, f"canary {why}")
    elif all(c.healthy_since and now - c.healthy_since >= wait for c in canaries):
        rollout = promote(settings, store, rollout)
    elif now - rollout.started_at > timedelta(seconds=settings.release.canary_timeout_s):
        pending = "; ".join(f"{c.device_id} {c.note}" for c in canaries if c.health != "healthy")
        limit = settings.release.canary_timeout_s
        rollout = halt(
            settings, store, rollout, f"canaries not healthy within {limit:g} s: {pending}"
        )
    save_rollout(store, rollout)
    if rollout.stage != "canary":
        say(f"[bridge] {rollout.summary()}")
    return rollout


def promote(settings: Settings, store: ObjectStore, rollout: Rollout) -> Rollout:
    """The canaries' release, the very same bytes, on the fleet topic; their own cleared."""
    payload = store.get_bytes(sequence_key(rollout.fleet, rollout.sequence))
    publish_retained(settings.mqtt, release_topic(rollout.fleet), payload)
    store.put_bytes(fleet_key(rollout.fleet), payload, "application/json")
    store.put_bytes(released_key(rollout.model.name), payload, "application/json")
    for canary in rollout.canaries:  # they follow the fleet again: same bytes, same sequence
        publish_retained(settings.mqtt, device_release_topic(canary.device_id), b"")
    wait = settings.release.canary_wait_s
    rollout = rollout.model_copy(
        update={"stage": "fleet", "reason": f"all canaries healthy for {wait:g} s"}
    )
    log.info("rollout promoted to the fleet", extra=_extra(rollout))
    return rollout


def halt(settings: Settings, store: ObjectStore, rollout: Rollout, reason: str) -> Rollout:
    """Stop ``rollout`` for ``reason``: the fleet's previous model released anew (a higher
    sequence) on the canaries' own topics; the fleet topic is left alone."""
    previous = None
    if rollout.previous_sequence is not None:
        envelope = store.get_bytes(sequence_key(rollout.fleet, rollout.previous_sequence))
        previous = unverified(ReleaseEnvelope.from_json(envelope)).message
    rollback: int | None = None
    if previous is None:
        reason += "; no previous release to roll the canaries back to"
    else:
        old: ReleaseMessage = previous
        signing_key = settings.release.signing_key
        private = load_private_key(signing_key) if signing_key else None
        now = utcnow()
        key = model_key(old.model.name, old.model.version, old.variant)
        url, valid_for = model_location(settings, store, key)  # a presigned URL signed anew
        by = f"{old.released_by} (rollback: rollout of #{rollout.sequence} halted)"

        def make(sequence: int) -> ReleaseMessage:
            update = {"sequence": sequence, "released_at": now, "expires_at": now + valid_for}
            return old.model_copy(update={**update, "url": url, "released_by": by[:200]})

        sealed = claim_sequence(settings, store, rollout.fleet, make, private)
        for canary in rollout.canaries:
            publish_retained(
                settings.mqtt, device_release_topic(canary.device_id), sealed.payload()
            )
        rollback = sealed.message.sequence
    rollout = rollout.model_copy(
        update={"stage": "halted", "reason": reason, "rollback_sequence": rollback}
    )
    log.warning("rollout halted", extra=_extra(rollout))
    return rollout


def _extra(rollout: Rollout) -> dict[str, Any]:
    model = rollout.model
    return {
        "fleet": rollout.fleet,
        "model": f"{model.name}:{model.version}",
        "sequence": rollout.sequence,
        "stage": rollout.stage,
        "reason": rollout.reason,
    }


def held_back(settings: Settings, fleet: str, version: str) -> str | None:
    """Why the watching bridge must not release ``version`` now (None: it may): its
    rollout is still with the canaries, or was halted (a person releases it anew)."""
    rollout = load_rollout(open_store(settings.store), fleet)
    if rollout is None or rollout.model.version != version or rollout.stage == "fleet":
        return None
    if rollout.stage == "canary":
        return f"{rollout.summary()}: waiting for the canaries"
    return f"{rollout.summary()}; not released again (`qcloop release --ref {version}` retries)"


def deliver(
    settings: Settings,
    release: SealedRelease,
    *,
    canary: bool | None = None,
    read_states: StatesReader = canary_states,
) -> str:
    """Publish ``release``: a staged rollout when ``canary`` (default: when
    ``release.canary_devices`` is set) unless this model already passed its canaries,
    else on the fleet topic. Where it went, for people."""
    from components.release import publish_release

    message = release.message
    if canary is None:
        canary = bool(settings.release.canary_devices)
    if canary:
        done = load_rollout(open_store(settings.store), message.fleet)
        proven = done is not None and done.stage == "fleet" and done.model == message.model
        if not proven:
            rollout = start_rollout(settings, release, read_states=read_states)
            return "canaries " + ", ".join(c.device_id for c in rollout.canaries)
    topic = publish_release(settings, release)
    halted = load_rollout(open_store(settings.store), message.fleet)
    if halted is not None and halted.stage == "halted":  # their rollback pins them: unpin
        for pinned in halted.canaries:
            publish_retained(settings.mqtt, device_release_topic(pinned.device_id), b"")
    return topic


def rollout_text(rollout: Rollout) -> str:
    """Where the release stands, for ``qcloop fleet``: a line, then one per canary."""
    lines = [rollout.summary()]
    for c in rollout.canaries:
        since = f", healthy since {c.healthy_since:%Y-%m-%d %H:%M:%S}" if c.healthy_since else ""
        lines.append(f"  canary {c.device_id}: {c.health} ({c.note}{since})")
    return "\n".join(lines)

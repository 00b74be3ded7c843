"""Staged rollout on a real broker and a local store: canaries first, then the fleet or a halt."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from components.release import build_release, publish_release
from components.rollout import (
    CanaryHealth,
    advance_rollout,
    deliver,
    held_back,
    judge,
    load_rollout,
)
from pipelines.cli import main
from qcloop.contracts import ModelRef, ReleaseEnvelope, ReleaseMessage, utcnow
from qcloop.mqtt import (
    device_release_topic,
    publish_retained,
    read_retained,
    release_topic,
    state_topic,
)
from qcloop.settings import ReleaseSettings, Settings
from qcloop.signing import unverified
from qcloop.storage import open_store
from tests.components.test_release import _approved, _settings

pytestmark = pytest.mark.integration


def _canary_settings(tmp_path: Path, mqtt_url: str, fleet: str, devices: list[str]) -> Settings:
    settings = _settings(tmp_path, mqtt_url, fleet=fleet)
    release = ReleaseSettings(canary_devices=devices, canary_wait_s=60.0)
    return settings.model_copy(update={"release": release})


def _heartbeat(settings: Settings, device: str, version: str, **fields: Any) -> None:
    """A device's retained state, as an edge agent publishes it."""
    state = {
        "status": "serving",
        "device_id": device,
        "fleet": settings.mqtt.fleet,
        "model": {"name": "det", "version": version},
        **fields,
    }
    publish_retained(settings.mqtt, state_topic(device), json.dumps(state).encode())


def _on(settings: Settings, topic: str) -> ReleaseMessage | None:
    payload = read_retained(settings.mqtt, topic)
    return unverified(ReleaseEnvelope.from_json(payload)).message if payload else None


def _two_versions(settings: Settings, onnx: Path) -> tuple[str, str]:
    """v1 released to the whole fleet (#1), v2 approved and not released yet."""
    first = _approved(settings, onnx).version
    publish_release(settings, build_release(settings, ref=first, released_by="ops"))
    return first, _approved(settings, onnx).version


def test_healthy_canaries_take_the_release_to_the_fleet_after_the_wait(
    tmp_path: Path,
    mqtt_url: str,
    exported_onnx: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a fleet on v1 and two canaries
    settings = _canary_settings(tmp_path, mqtt_url, "roll-ok", ["ok-a", "ok-b"])
    v1, v2 = _two_versions(settings, exported_onnx)
    for device in ("ok-a", "ok-b"):
        _heartbeat(settings, device, v1)
    # when v2 is released: it goes to the canaries' own topics only
    release = build_release(settings, ref=v2, released_by="ops")
    assert deliver(settings, release) == "canaries ok-a, ok-b"
    for device in ("ok-a", "ok-b"):
        assert read_retained(settings.mqtt, device_release_topic(device)) == release.payload()
    fleet = _on(settings, release_topic("roll-ok"))
    assert fleet is not None and (fleet.model.version, fleet.sequence) == (v1, 1)
    # and the rollout waits while one canary is on trial and one still on v1
    t0 = utcnow()
    _heartbeat(settings, "ok-a", v2, model_on_trial_since=t0.isoformat())
    rollout = advance_rollout(settings, now=t0, say=lambda _: None)
    assert rollout is not None and rollout.stage == "canary"
    assert [c.health for c in rollout.canaries] == ["waiting", "waiting"]
    assert held_back(settings, "roll-ok", v2) is not None  # the watching bridge waits too
    # then both serve v2 out of trial: healthy, and the fleet gets it only after the wait
    for device in ("ok-a", "ok-b"):
        _heartbeat(settings, device, v2)
    rollout = advance_rollout(settings, now=t0 + timedelta(seconds=1), say=lambda _: None)
    assert rollout is not None and rollout.stage == "canary"
    assert {c.health for c in rollout.canaries} == {"healthy"}
    rollout = advance_rollout(settings, now=t0 + timedelta(seconds=40), say=lambda _: None)
    assert rollout is not None and rollout.stage == "canary"
    said: list[str] = []
    rollout = advance_rollout(settings, now=t0 + timedelta(seconds=62), say=said.append)
    assert rollout is not None and rollout.stage == "fleet", rollout
    assert said and "fleet" in said[0]
    # the very same envelope, bytes and sequence, on the fleet topic; canaries follow it again
    assert read_retained(settings.mqtt, release_topic("roll-ok")) == release.payload()
    for device in ("ok-a", "ok-b"):
        assert not read_retained(settings.mqtt, device_release_topic(device))
    assert held_back(settings, "roll-ok", v2) is None
    # and `qcloop fleet` says where the release stands
    monkeypatch.setenv("QCLOOP_MQTT__URL", mqtt_url)
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "store"))
    assert main(["fleet", "--fleet", "roll-ok"]) == 0
    out = capsys.readouterr().out
    assert f"rollout of det:{v2} (#2) to fleet roll-ok: fleet" in out
    assert "canary ok-a: healthy" in out


def test_a_canary_that_rejects_the_model_halts_the_rollout_and_gets_the_old_one_back(
    tmp_path: Path,
    mqtt_url: str,
    exported_onnx: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a fleet on v1 (#1) and v2 (#2) out to two canaries
    settings = _canary_settings(tmp_path, mqtt_url, "roll-bad", ["bad-a", "bad-b"])
    v1, v2 = _two_versions(settings, exported_onnx)
    for device in ("bad-a", "bad-b"):
        _heartbeat(settings, device, v1, releases_refused=2)
    release = build_release(settings, ref=v2, released_by="ops")
    deliver(settings, release)
    # when one canary rejects v2 (its trial failed, back on the last good v1)
    _heartbeat(settings, "bad-a", v2, model_on_trial_since=utcnow().isoformat())
    rejected = f"det {v2} (0123456789ab) at 2026-01-01T00:00:00+00:00: crashed on frame 1"
    _heartbeat(settings, "bad-b", v1, models_rejected=1, model_last_rejected=rejected)
    said: list[str] = []
    rollout = advance_rollout(settings, say=said.append)
    # then the rollout is halted, saying why
    assert rollout is not None and rollout.stage == "halted"
    assert "bad-b rejected a model" in rollout.reason and "crashed" in rollout.reason
    assert said and "halted" in said[0]
    stored = load_rollout(open_store(settings.store), "roll-bad")
    assert stored is not None and stored.stage == "halted" and stored.rollback_sequence == 3
    # the fleet topic never got v2
    fleet = _on(settings, release_topic("roll-bad"))
    assert fleet is not None and (fleet.model.version, fleet.sequence) == (v1, 1)
    # the canaries get v1 back, under a sequence above v2's
    for device in ("bad-a", "bad-b"):
        back = _on(settings, device_release_topic(device))
        assert back is not None and (back.model.version, back.sequence) == (v1, 3)
        assert back.sha256 == fleet.sha256 and back.expires_at > fleet.released_at
    # a halted rollout stays halted, and the watching bridge does not release v2 again
    later = advance_rollout(settings, now=utcnow() + timedelta(hours=2), say=said.append)
    assert later is not None and later.stage == "halted" and len(said) == 1
    assert "not released again" in (held_back(settings, "roll-bad", v2) or "")
    monkeypatch.setenv("QCLOOP_MQTT__URL", mqtt_url)
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "store"))
    assert main(["fleet", "--fleet", "roll-bad"]) == 0
    out = capsys.readouterr().out
    assert f"to fleet roll-bad: halted, canaries back on {v1} (#3)" in out
    assert "canary bad-b: failed" in out
    # a release to the whole fleet at once frees the canaries of their rollback
    again = build_release(settings, ref=v1, released_by="ops")
    assert deliver(settings, again, canary=False) == release_topic("roll-bad")
    for device in ("bad-a", "bad-b"):
        assert not read_retained(settings.mqtt, device_release_topic(device))


def test_canaries_that_do_not_get_healthy_in_time_halt_the_rollout(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    settings = _canary_settings(tmp_path, mqtt_url, "roll-slow", ["slow-a"])
    v1, v2 = _two_versions(settings, exported_onnx)
    _heartbeat(settings, "slow-a", v1)
    deliver(settings, build_release(settings, ref=v2, released_by="ops"))
    timeout = settings.release.canary_timeout_s
    rollout = advance_rollout(settings, now=utcnow() + timedelta(seconds=timeout + 1))
    assert rollout is not None and rollout.stage == "halted"
    assert f"not healthy within {timeout:g} s: slow-a still on det:{v1}" in rollout.reason


def test_judging_a_canary_by_its_heartbeat() -> None:
    new = ModelRef(name="det", version="5")
    canary = CanaryHealth(device_id="c", refused_before=1)
    serving = {"status": "serving", "model": {"name": "det", "version": "5"}}
    assert judge(canary, None, new).health == "waiting"
    assert judge(canary, {"status": "unreadable", "error": "x"}, new).note == "x"
    assert judge(canary, {**serving, "status": "offline"}, new).health == "failed"
    assert judge(canary, {**serving, "releases_refused": 1}, new).health == "healthy"
    refused = judge(canary, {**serving, "releases_refused": 2, "release_last_error": "bad"}, new)
    assert (refused.health, refused.note) == ("failed", "refused a release: bad")
    took = judge(canary, serving, new)
    old = {"status": "serving", "model": {"name": "det", "version": "4"}}
    assert judge(canary, old, new).health == "waiting"  # not there yet
    assert judge(took, old, new).note == "serves det:4 again after 5"  # went back

"""Commit after proof: a new model is on trial until it served N frames and T seconds; a
model that failed, or that the agent died with on trial, is rejected on disk for good."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import print_state
from edge_agent.config import TRIAL_FRAMES, TRIAL_S, EdgeConfig, ReleaseConfig
from edge_agent.health import Health
from edge_agent.history import read_history, record_good
from edge_agent.policies import FeedbackPolicies
from edge_agent.rejected import MAX_REJECTED, REJECTED_FILE, RejectedModels
from edge_agent.release import ModelLoader, ServingModel, load_last_good, load_local, open_model
from edge_agent.stats import AgentStats, Counters
from edge_agent.store import LazyStore
from edge_agent.trial import CRASHED, TRIAL_FILE, Trial, TrialRecord
from edge_agent.trust import ReleaseGate
from qcloop.contracts import ModelRef, utcnow
from qcloop.devices import DeviceState
from qcloop.settings import StoreSettings, read_toml
from tests.edge_agent.edge_helpers import (
    envelope_of,
    make_config,
    make_constant_model,
    make_flaky_model,
    publish,
    release_for,
    release_keys,
    signed,
    wait_until,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "edge_agent" / "qcloop-edge.example.toml"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config_for(tmp_path: Path, **release: object) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device_id": "cam1",
            "fleet": "f",
            "model_dir": tmp_path / "models",
            "source": {"kind": "simulated"},
            "release": {"public_key": release_keys()[1], **release},
            "store": StoreSettings(kind="local", path=tmp_path / "store"),
        }
    )


def released(config: EdgeConfig, n: int) -> ServingModel:
    """Version ``n`` (sequence ``n``) loaded from its file in model_dir, with its envelope."""
    config.model_dir.mkdir(parents=True, exist_ok=True)
    output = np.full((1, 84, 10), n / 1000, np.float32)
    path = make_constant_model(config.model_dir / f"v{n}.onnx", output)
    release = release_for(path, config.fleet, version=str(n))
    return open_model(release, path, config, envelope_of(release))


def good_versions(config: EdgeConfig) -> list[str]:
    return [m.release.model.version for m in read_history(config.model_dir)]


# ------------------------------------------------------------------ promotion


def test_a_new_model_is_promoted_after_its_frames_and_its_time(tmp_path: Path) -> None:
    # given a device with a trial of 5 frames and 60 s, and a new model
    config = config_for(tmp_path, trial_frames=5, trial_s=60.0)
    clock, counters = Clock(), Counters()
    trial = Trial(config, counters, clock=clock)
    model = released(config, 1)
    # when it is swapped in, its trial is on disk first
    assert trial.begin(model)
    record = TrialRecord.model_validate_json((config.state_dir / TRIAL_FILE).read_bytes())
    assert (record.sha256, record.file, record.version, record.sequence) == (
        model.sha256,
        model.path.name,
        "1",
        1,
    )
    assert trial.since == record.started
    # then enough frames are not enough before the time
    for _ in range(5):
        trial.frame(ok=True)
    clock.now += 59.0
    trial.check(model)
    assert trial.since is not None and good_versions(config) == []
    # and a failure starts the count again: the time alone is not enough either
    trial.frame(ok=False)
    clock.now += 10.0
    for _ in range(4):
        trial.frame(ok=True)
    trial.check(model)
    assert good_versions(config) == []
    # and with five frames in a row and 60 s it is good: last-good, the record removed
    trial.frame(ok=True)
    trial.check(model)
    assert good_versions(config) == ["1"]
    assert trial.since is None and not (config.state_dir / TRIAL_FILE).exists()
    assert counters.get("errors") == 0


def test_a_model_that_served_before_or_given_with_model_is_not_on_trial(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    trial = Trial(config, Counters(), clock=Clock())
    v1, v2 = released(config, 1), released(config, 2)
    assert v1.envelope is not None
    record_good(config.model_dir, v1.envelope, v1.path, 3)
    # a new model is on trial; going back to one that served before, it is good at once
    assert trial.begin(v2) and trial.since is not None
    assert trial.begin(v1) and trial.since is None
    assert not (config.state_dir / TRIAL_FILE).exists()
    assert good_versions(config) == ["1"]
    # and a --model file is never on trial
    assert trial.begin(load_local(v2.path, config)) and trial.since is None


def test_the_trial_defaults_have_one_source_the_example_says_the_same() -> None:
    release = ReleaseConfig()
    assert (release.trial_frames, release.trial_s) == (TRIAL_FRAMES, TRIAL_S)
    example = read_toml(EXAMPLE)["release"]
    assert (example["trial_frames"], example["trial_s"]) == (TRIAL_FRAMES, TRIAL_S)
    docs = (EXAMPLE.parents[1] / "docs" / "edge.md").read_text()
    assert f"`release.trial_frames` ({TRIAL_FRAMES})" in docs
    assert f"`release.trial_s` ({TRIAL_S:g})" in docs


# ------------------------------------------------------------------ rejection at start


def test_a_model_still_on_trial_at_start_is_rejected_and_its_release_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given A good, then B on trial when the agent died (its record left on disk)
    config = config_for(tmp_path)
    a, b = released(config, 1), released(config, 2)
    assert a.envelope is not None and b.release is not None
    record_good(config.model_dir, a.envelope, a.path, 3)
    assert Trial(config, Counters()).begin(b)
    # when the agent starts again
    counters = Counters()
    trial = Trial(config, counters)
    entry = trial.recover()
    # then B is rejected on disk, with the reason, its file deleted, the record removed
    assert entry is not None and (entry.sha256, entry.reason) == (b.sha256, CRASHED)
    again = RejectedModels(config.state_dir)
    stored = again.get(b.sha256)
    assert stored is not None and stored.version == "2"
    assert not b.path.exists() and not (config.state_dir / TRIAL_FILE).exists()
    assert (counters.get("models_rejected"), counters.get("errors")) == (1, 1)
    # and A serves
    gate = ReleaseGate(config)
    serving = load_last_good(config, gate, counters, again)
    assert serving is not None and serving.ref.version == "1"
    # and B's release (the same, retained) is refused by its sha256, with the reason
    loader = ModelLoader(config, LazyStore(config.store), counters, gate, again)
    loader.serving(serving)
    loader.start()
    try:
        with caplog.at_level(logging.ERROR, logger="edge_agent.release"):
            loader.submit(signed(b.release))
            wait_until(lambda: counters.get("releases_refused") == 1, what="B refused")
        (line,) = [r for r in caplog.records if "rejected model" in r.getMessage()]
        assert CRASHED in line.error  # type: ignore[attr-defined]
        # and a release of another model, C, is taken
        c = released(config, 3)
        assert c.release is not None
        loader.submit(signed(c.release))
        assert loader.wait_ready(10)
        ready = loader.take_ready()
        assert ready is not None and ready.ref.version == "3"
    finally:
        loader.close()


def test_a_trial_record_of_a_promoted_model_is_cleared_not_rejected(tmp_path: Path) -> None:
    # the agent died after writing last-good.json, before removing the trial record
    config = config_for(tmp_path)
    a = released(config, 1)
    assert Trial(config, Counters()).begin(a) and a.envelope is not None
    record_good(config.model_dir, a.envelope, a.path, 3)
    trial = Trial(config, Counters())
    assert trial.recover() is None
    assert trial.rejected.get(a.sha256) is None and a.path.exists()
    assert not (config.state_dir / TRIAL_FILE).exists()


def test_a_clean_stop_ends_a_trial_without_a_verdict(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    trial = Trial(config, Counters())
    model = released(config, 1)
    assert trial.begin(model)
    trial.end()
    assert trial.since is None and not (config.state_dir / TRIAL_FILE).exists()
    # the next start rejects nothing; the model is not good yet, its file stays
    again = Trial(config, Counters())
    assert again.recover() is None and again.rejected.last() is None
    assert model.path.exists() and good_versions(config) == []


def test_the_rejected_list_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    rejected = RejectedModels(tmp_path)
    for n in range(MAX_REJECTED + 5):
        rejected.add(f"{n:064x}", ModelRef(name="m", version=str(n)), "failing")
    again = RejectedModels(tmp_path)
    assert again.get(f"{4:064x}") is None and again.get(f"{5:064x}") is not None
    last = again.last()
    assert last is not None and last.version == str(MAX_REJECTED + 4)
    assert (tmp_path / REJECTED_FILE).read_text().count('"sha256"') == MAX_REJECTED
    (tmp_path / REJECTED_FILE).write_text("{broken")
    assert RejectedModels(tmp_path).last() is None  # logged, starts from none


# ------------------------------------------------------------------ failing during the trial


@pytest.mark.integration
def test_a_model_failing_during_its_trial_is_rolled_back_and_rejected_for_good(
    mqtt_url: str, tmp_path: Path
) -> None:
    # given an agent serving v1, good, on the simulated camera
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "interval_s": 0.02}
    config = make_config(
        tmp_path, mqtt_url, store, "cam-trial-fail", source=source, feedback={"enabled": False}
    )
    v1 = release_for(make_constant_model(tmp_path / "v1.onnx", np.zeros((1, 84, 10))), config.fleet)
    publish(mqtt_url, config.fleet, v1)
    agent = Agent(config)
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=30)), daemon=True)
    thread.start()
    wait_until(lambda: good_versions(config) == ["1"], what="v1 good")
    # when v2 passes its smoke test but fails on real frames, while on trial
    v2 = release_for(make_flaky_model(tmp_path / "flaky.onnx"), config.fleet, version="2")
    publish(mqtt_url, config.fleet, v2)
    wait_until(lambda: agent.stats().rollbacks == 1, what="the rollback")
    frames = agent.stats().frames_inferred
    wait_until(lambda: agent.stats().frames_inferred > frames + 2, what="v1 inferring again")
    agent.stop()
    thread.join(10)
    # then v1 serves again, v2 is rejected on disk with the reason, never good
    (stats,) = out
    assert stats.serving_model == v1.model and stats.models_rejected == 1
    entry = RejectedModels(config.state_dir).get(v2.sha256)
    assert entry is not None and entry.reason == "inference failed on 3 frames in a row"
    assert good_versions(config) == ["1"] and not (config.state_dir / TRIAL_FILE).exists()
    # and after a restart, v2's retained release is refused: v1 serves on
    again = Agent(config)
    stats = again.run(max_frames=3, timeout_s=20)
    assert (stats.serving_model, stats.swaps, stats.releases_refused) == (v1.model, 0, 1)


# ------------------------------------------------------------------ what the operator sees


def test_status_shows_the_trial_and_the_last_rejected_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rejected = RejectedModels(tmp_path).add("ab" * 32, ModelRef(name="det", version="2"), CRASHED)
    state = DeviceState(
        status="serving",
        device_id="cam1",
        fleet="f",
        model=ModelRef(name="det", version="3"),
        model_on_trial_since=utcnow(),
        models_rejected=1,
        model_last_rejected=rejected.describe(),
    )
    print_state(state)
    table = capsys.readouterr().out
    assert "model:            det 3 (on trial since " in table
    assert "models rejected:  1 (last: det 2 (abababababab) at " in table
    assert CRASHED in table


def test_the_heartbeat_shows_the_model_on_trial_and_the_last_rejected(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    counters = Counters()
    health = Health(config, counters, FeedbackPolicies(config.feedback))
    health.trial = trial = Trial(config, counters)
    model = released(config, 1)
    assert health.state("serving", utcnow(), model.ref).model_on_trial_since is None
    assert trial.begin(model)
    state = health.state("serving", utcnow(), model.ref)
    assert state.model_on_trial_since == trial.since is not None
    trial.reject(model, 3)
    state = health.state("waiting_for_model", utcnow(), None)
    assert state.models_rejected == 1 and state.model_on_trial_since is None
    assert state.model_last_rejected is not None
    assert state.model_last_rejected.startswith(f"scratch-detector 1 ({model.sha256[:12]}) at ")
    assert state.model_last_rejected.endswith(": inference failed on 3 frames in a row")

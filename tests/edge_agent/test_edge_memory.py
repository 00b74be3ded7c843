"""Memory over months: a replaced model is let go, heap pages go back to the system."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.inference import Detector
from edge_agent.memory import limit_arenas, trim_heap
from qcloop.contracts import ModelRef
from qcloop.settings import StoreSettings
from tests.edge_agent.edge_helpers import (
    make_config,
    make_constant_model,
    publish,
    release_for,
    wait_until,
)


def test_heap_helpers_work_on_this_glibc_system() -> None:
    assert trim_heap() is True
    assert limit_arenas(2) is True


@pytest.mark.integration
def test_a_replaced_model_is_not_kept_alive(mqtt_url: str, tmp_path: Path) -> None:
    # given an agent started on a local model, inspecting the simulated camera
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "interval_s": 0.02}
    config = make_config(
        tmp_path, mqtt_url, store, "cam-memory", source=source, feedback={"enabled": False}
    )
    first = make_constant_model(tmp_path / "first.onnx", np.zeros((1, 84, 10), np.float32))
    agent = Agent(config, initial_model=first)
    thread = threading.Thread(target=lambda: agent.run(timeout_s=30), daemon=True)
    thread.start()
    try:
        wait_until(lambda: agent.stats().frames_inferred >= 2, what="the first model inferring")
        # when a release replaces it and frames go on
        second = make_constant_model(tmp_path / "second.onnx", np.zeros((1, 84, 7), np.float32))
        publish(mqtt_url, config.fleet, release_for(second, config.fleet))
        wanted = ModelRef(name="scratch-detector", version="1")
        wait_until(lambda: agent.serving_model == wanted, what="the release served")
        frames = agent.stats().frames_inferred
        wait_until(lambda: agent.stats().frames_inferred > frames + 3, what="frames on v1")
        gc.collect()
        # then no session of the first model is alive any more (only its file, to roll back)
        alive = [o.path.name for o in gc.get_objects() if isinstance(o, Detector)]
        assert "first.onnx" not in alive and alive.count(agent._serving.path.name) >= 1
    finally:
        agent.stop()
        thread.join(10)

"""Memory over months: a replaced model is let go, heap pages go back to the system."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.inference import Detector
from edge_agent.memory import cache_image_blocks, limit_arenas, map_large_blocks, trim_heap
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
    assert map_large_blocks() is True
    assert cache_image_blocks() is True


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


BLOCKS = """
import os, sys
from edge_agent.memory import map_large_blocks
if sys.argv[1] == "mapped":
    assert map_large_blocks()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before, kept = rss(), []
for n in range(20):  # frame after frame
    frame = bytearray(1920 * 1280 * 3)  # a decoded 1920x1280 frame
    rows = bytearray(1920 * 640 * 3 - n * 4096)  # the rows a resize reads of it
    kept.append(bytearray(1000))  # a small object allocated after them, kept
    del frame, rows
print((rss() - before) // 2**20)
"""


def _kept_mb(mode: str) -> int:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", BLOCKS, mode], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_freed_frame_sized_blocks_go_back_to_the_system() -> None:
    # given processes that allocate, touch and free frame-sized blocks, frame after frame,
    # with small objects allocated after them (as an agent's frames and detections are)
    # when one maps large blocks, as the agent does before its threads start
    mapped, heap = _kept_mb("mapped"), _kept_mb("heap")
    # then it keeps none of them, where glibc's default keeps them in the heap
    assert mapped < 2, f"{mapped} MB kept after the frames were freed"
    assert heap > mapped + 4, f"glibc's default kept {heap} MB: the check no longer tells"

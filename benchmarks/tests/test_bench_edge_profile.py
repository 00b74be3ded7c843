"""The edge profile prints each step of a frame and the agent's own cost against the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("setting", "resizer"), [("auto", "numpy"), ("opencv", "opencv")])
def test_bench_edge_profile_times_each_step_of_a_frame(
    yolo_onnx: Path, metal_tags: Path, setting: str, resizer: str
) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bench_edge_profile", "--model", str(yolo_onnx)]
    cmd += ["--images", str(metal_tags / "images"), "--frames", "4"]
    env = {**os.environ, "QCLOOP_EDGE_RESIZE": setting}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("{"))
    # the frame is resized as the agent would in that process: OpenCV only where loaded
    assert json.loads(line)["resize"] == resizer and f"resized with {resizer}" in out.stdout
    steps = json.loads(line)["steps"]
    assert list(steps) == [
        "read", "decode", "to array", "resize", "normalise", "session.run", "post", "detect"
    ]  # fmt: skip
    assert steps["session.run"]["mean_ms"] > 0 and steps["decode"]["mean_ms"] > 0
    assert steps["detect"]["mean_ms"] >= steps["session.run"]["mean_ms"] * 0.5
    assert "| session.run |" in out.stdout and "agent's own cost" in out.stdout


def test_bench_edge_profile_says_when_there_is_no_model(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bench_edge_profile", "--model", str(tmp_path / "x")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no model" in out.stderr

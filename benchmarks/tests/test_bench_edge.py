"""The edge benchmark script runs end to end (tiny sizes) and prints its targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import EdgeConfig

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_bench_edge_prints_each_path_and_the_targets(
    yolo_onnx: Path, metal_tags: Path, tmp_path: Path
) -> None:
    paths = (
        "session@w2t1,agent@w2t1,detect@w1t1,ultralytics-rect@w1t1,release@w1t1,"
        "paced@w2t1,paced-inline@w1t1,infer@w1t1"
    )
    cmd = [sys.executable, "-m", "benchmarks.bench_edge", "--model", str(yolo_onnx)]
    cmd += ["--images", str(metal_tags / "images"), "--frames", "6", "--rounds", "1"]
    cmd += ["--fps", "50"]
    out = subprocess.run(
        [*cmd, "--paths", paths], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["path"] for r in rows] == paths.split(",")
    agent = rows[1]
    assert agent["per_frame_ms"] > 0 and agent["peak_rss_mb"] > 0
    # the agent's own cost: against as many sessions side by side as it has workers
    assert rows[0]["mean_ms"] > 0 and rows[0]["p50_ms"] > 0
    assert "agent@w2t1     / session@w2t1" in out.stdout and "(target <= 1.10x" in out.stdout
    assert "agent@w2t1     / ultralytics-rect@w1t1" in out.stdout
    # how fast the target lets the agent be on this CPU: the bare sessions against ultralytics
    assert "ceiling: session@w2t1 is" in out.stdout
    assert "faster than ultralytics-rect@w1t1 (an agent of no cost" in out.stdout
    assert "release -> serving p50" in out.stdout
    # the paced camera (no queue), with and without the prefetch thread, and the CLI
    paced, inline, infer = rows[5:]
    default = EdgeConfig.model_fields["prefetch_frames"].default
    assert default > 0 and (paced["prefetch_frames"], inline["prefetch_frames"]) == (default, 0)
    assert 0 < paced["p50_ms"] <= paced["p95_ms"] and paced["fps"] == 50
    assert "paced-inline@w1t1  at 50 fps: frame -> result p50" in out.stdout
    assert infer["mean_ms"] > 0 and infer["peak_rss_mb"] > 50  # the CLI's own process
    assert "infer per frame" in out.stdout and "against the agent's best" in out.stdout


def test_bench_edge_refuses_a_bad_path_spec(yolo_onnx: Path, metal_tags: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bench_edge", "--model", str(yolo_onnx)]
    cmd += ["--images", str(metal_tags / "images")]
    out = subprocess.run([*cmd, "--paths", "agent@2"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "bad path 'agent@2'" in out.stderr

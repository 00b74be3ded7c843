"""The CPU training-threads benchmark trains both ways on real images and prints the ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_train_threads

ROOT = Path(__file__).resolve().parents[2]


def test_epoch_seconds_are_the_differences_of_the_cumulative_time(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text("epoch,  time,train/box_loss\n1, 40.5,3\n2, 80.0,2\n3, 121.5,1\n")
    assert bench_train_threads.epoch_seconds(results) == [40.5, 39.5, 41.5]


@pytest.mark.integration
def test_bench_train_threads_times_both_thread_counts(tiny_dataset: Path, tmp_path: Path) -> None:
    from ultralytics.utils import NUM_THREADS

    from components.threads import cpu_threads

    cmd = [sys.executable, "-m", "benchmarks.bench_train_threads"]
    cmd += ["--data", str(tiny_dataset), "--epochs", "2", "--imgsz", "160", "--batch", "4"]
    cmd += ["--rounds", "1", "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    cores = cpu_threads()
    assert result["threads"] == {"ultralytics": NUM_THREADS, "qcloop": cores}
    assert all(s > 0 for s in result["s_per_epoch"].values())
    ratio = result["s_per_epoch"]["ultralytics"] / result["s_per_epoch"]["qcloop"]
    assert result["speedup"] == pytest.approx(ratio, abs=0.05)  # of rounded figures
    assert f"[components.threads] cpu: {cores} threads" in out.stderr
    assert "speed-up of qcloop's threads" in out.stdout


def test_bench_train_threads_names_a_missing_folder(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bench_train_threads"]
    out = subprocess.run(
        [*cmd, "--data", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2 and "none: no such folder" in out.stderr

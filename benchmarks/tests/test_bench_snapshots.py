"""The snapshot benchmark scores a run's checkpoints pooled and its boxes rescaled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_snapshots
from tests.components.datasets import build_dataset, scored_image

ROOT = Path(__file__).resolve().parents[2]

IMGSZ = 160


def test_scaled_keeps_the_centres_and_scales_the_sides() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(bench_snapshots.scaled(boxes, 0.5, 1.5), [[15, 10, 25, 70]])


def about(value: float) -> object:
    """Within 0.01 (a perfect AP is 0.995: ultralytics integrates P-R over 101 points)."""
    return pytest.approx(value, abs=0.01)


def test_box_metrics_score_as_the_validator_and_see_boxes_too_wide() -> None:
    box_map = bench_snapshots.box_metrics
    # a box 10% too wide: IoU 0.909, a hit at the IoU thresholds 0.50-0.90, a miss at 0.95
    wide = scored_image([[-5, 0, 105, 100]], [0.9], [[0, 0, 100, 100]])
    exact = scored_image([[200, 200, 240, 230]], [0.8], [[200, 200, 240, 230]])
    plain = box_map([wide])
    assert plain == {"map50": about(1), "map50_95": about(0.9), "precision": 1, "recall": 1}
    assert box_map([wide], 1 / 1.1, 1.0)["map50_95"] == about(1)
    # each factor has its price: the exact box narrowed by 10% misses at 0.95 in turn
    assert box_map([exact])["map50_95"] == about(1)
    assert box_map([exact], 0.9, 1.0)["map50_95"] == about(0.9)
    # ranked by confidence as the validator ranks: a false box above the true one halves AP
    ahead = scored_image([[200, 200, 240, 230], [0, 0, 9, 9]], [0.8, 0.95], [[200, 200, 240, 230]])
    assert box_map([ahead])["map50"] == about(0.5)
    # the grid's factors that fix the wide box (IoU >= 0.95: 0.90-0.94 wide), the one
    # nearest to 1 taken
    assert bench_snapshots.best_scale([wide]) == (0.94, 1.0)
    # no predictions at all: zeros, not an error
    assert box_map([scored_image([], [], [[0, 0, 1, 1]])])["map50_95"] == 0.0


@pytest.mark.integration
def test_bench_snapshots_pools_checkpoints_and_rescales_boxes(
    metal_tags: Path, tmp_path: Path
) -> None:
    from benchmarks.training import train_variant

    # given a finished run of the reference recipe that kept every epoch's weights,
    # on a version with a val split
    data = tmp_path / "data"
    build_dataset(metal_tags, data, {"train": 2, "val": 1, "test": 1})
    runs = tmp_path / "runs"
    train_variant(
        data,
        runs / "reference-seed0",
        recipe="reference",
        model_size="n",
        epochs=2,
        imgsz=IMGSZ,
        batch=4,
        save_period=1,
        patience=5,
    )
    weights = runs / "reference-seed0" / "run" / "weights"
    assert (weights / "epoch0.pt").is_file() and (weights / "epoch1.pt").is_file()
    cmd = [sys.executable, "-m", "benchmarks.bench_snapshots", "--runs", str(runs)]
    cmd += ["--data", str(data), "--imgsz", str(IMGSZ), "--variant", "reference"]

    def snapshots(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd + list(args), cwd=tmp_path, capture_output=True, text=True, timeout=600
        )

    # when its checkpoints are scored alone and pooled, and its boxes rescaled
    done = snapshots("--pools", "best,epoch0+epoch1,last", "--box-scale")
    # then each has its row on the version's test split
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((runs / "snapshots-reference.json").read_text())
    assert [r["variant"] for r in results] == [
        "best",
        "epoch0+epoch1",
        "last",
        "best scaled on val",
        "best scaled on test",
    ]
    assert all(r["seed"] == 0 and "error" not in r for r in results)
    assert all(r["images"] == 4 for r in results[:3])
    # the factors are from the grid; on the test split itself they do at least as well
    # as no scaling, which is the validator's own figure for best
    for row in results[3:]:
        assert all(f in bench_snapshots.SCALES for f in row["scale"])
    assert results[4]["map50_95"] >= results[0]["map50_95"] - 1e-4
    assert "| epoch0+epoch1 | 1 |" in done.stdout and "| best scaled on val | 1 |" in done.stdout
    # and weights the run does not have are an error row naming them, exit 1
    again = snapshots("--pools", "best+epoch7")
    assert again.returncode == 1
    error = json.loads((runs / "snapshots-reference.json").read_text())[0]["error"]
    assert "epoch7.pt: no such weights" in error and "--save-period" in error
    bad = snapshots("--variant", "nonsense")
    assert bad.returncode == 2 and "bench_snapshots: " in bad.stderr

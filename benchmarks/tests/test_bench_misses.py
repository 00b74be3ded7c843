"""The misses benchmark says where a run's mAP50-95 goes: AP by IoU, misses by kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_misses, bench_snapshots
from tests.components.datasets import build_dataset, scored_image

ROOT = Path(__file__).resolve().parents[2]

IMGSZ = 160


# one photo with every kind: a scratch labelled whole and found in two pieces (label 0),
# a stub labelled apart and found inside the box of the scratch beside it (labels 1, 2),
# a loose box (label 3), a scratch not found (label 4); a box on the background, one
# under the confidence that counts
PHOTO = scored_image(
    [
        [0, 0, 48, 20],  # piece of label 0
        [52, 0, 100, 20],  # piece of label 0
        [200, 0, 300, 100],  # matches label 1 and holds label 2
        [390, 10, 430, 90],  # loose on label 3 (IoU 0.49)
        [600, 600, 640, 640],  # background
        [700, 700, 720, 720],  # under --conf
    ],
    [0.9, 0.8, 0.95, 0.6, 0.5, 0.1],
    [
        [0, 0, 100, 20],
        [210, 0, 300, 100],
        [200, 0, 215, 15],
        [400, 0, 440, 80],
        [900, 900, 950, 950],
    ],
)


def test_misses_are_sorted_by_kind() -> None:
    labels, boxes = bench_misses.classify(*PHOTO)
    assert labels == ["pieces", "found", "part of a neighbour", "loose", "not found"]
    assert boxes == [
        "inside a label",
        "inside a label",
        "matched",
        "loose on a label",
        "background",
        "",
    ]
    # a label found at IoU >= 0.5 is found, whatever lies inside it
    assert bench_misses.classify(*scored_image([[0, 0, 100, 20]], [0.9], [[0, 0, 100, 20]]))[0] == [
        "found"
    ]
    # an image without labels: every box it shows is background
    assert bench_misses.classify(*scored_image([[0, 0, 5, 5]], [0.9], []))[1] == ["background"]


def test_ignoring_the_disputed_labels_drops_them_and_the_pieces() -> None:
    ((boxes, conf, truth),) = bench_misses.without_disputed([PHOTO])
    np.testing.assert_array_equal(truth, PHOTO[2][[1, 3, 4]])
    assert len(boxes) == 4 and conf.tolist() == [0.95, 0.6, 0.5, 0.1]
    # the pieces were false boxes ahead of every true one: ignored, the AP rises
    figures = bench_misses.misses([PHOTO])
    assert figures["map50_95_disputed_ignored"] > figures["map50_95"]
    assert figures["labels"] == {
        "found": 1,
        "pieces": 1,
        "part of a neighbour": 1,
        "loose": 1,
        "not found": 1,
    }
    assert figures["boxes"] == {
        "matched": 1,
        "inside a label": 2,
        "loose on a label": 1,
        "background": 1,
    }


def test_ap_by_iou_threshold_is_the_validators_figure() -> None:
    wide = scored_image([[-5, 0, 105, 100]], [0.9], [[0, 0, 100, 100]])  # IoU 0.909
    rows = [wide, PHOTO]
    ap = bench_misses.misses(rows)["ap_by_iou"]
    assert len(ap) == 10 and ap == sorted(ap, reverse=True)
    assert sum(ap) / 10 == pytest.approx(bench_snapshots.box_metrics(rows)["map50_95"], abs=1e-3)
    assert ap[0] == pytest.approx(bench_snapshots.box_metrics(rows)["map50"], abs=1e-4)
    # the wide box alone: a hit up to IoU 0.90, a miss at 0.95
    assert bench_misses.misses([wide])["ap_by_iou"][-2:] == [pytest.approx(0.995), 0.0]


@pytest.mark.integration
def test_bench_misses_reports_a_finished_run(metal_tags: Path, tmp_path: Path) -> None:
    from components.train import train_yolo

    # given a finished run of the reference recipe on a version with val and test splits
    data = tmp_path / "data"
    build_dataset(metal_tags, data, {"train": 2, "val": 1, "test": 1})
    runs = tmp_path / "runs"
    train_yolo(data, runs / "reference-seed0", epochs=2, imgsz=IMGSZ, batch=4, patience=5)
    cmd = [sys.executable, "-m", "benchmarks.bench_misses", "--runs", str(runs)]
    cmd += ["--data", str(data), "--imgsz", str(IMGSZ), "--variant", "reference"]
    # when its misses are counted on val and test
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    # then each split has its row: every label counted once, AP by threshold
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((runs / "misses-reference.json").read_text())
    assert [(r["run"], r["split"]) for r in results] == [
        ("reference-seed0", "val"),
        ("reference-seed0", "test"),
    ]
    manifest = json.loads((data / "manifest.json").read_text())
    for row in results:
        assert sum(row["labels"].values()) == manifest["counts"][row["split"]]["boxes"]
        assert len(row["ap_by_iou"]) == 10
        assert row["map50_95_disputed_ignored"] >= 0.0
    assert "| reference-seed0 | test |" in done.stdout
    # and a bad option is one line, exit 2
    bad = subprocess.run(
        [*cmd, "--splits", "holdout"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert bad.returncode == 2 and "bench_misses: --splits holdout" in bad.stderr

"""The label-agreement benchmark compares the labels of photos of the same part."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_label_agreement
from tests.components.datasets import build_dataset, yolo_folder

ROOT = Path(__file__).resolve().parents[2]

# three photos of one tag, taken in three captures a minute apart, and one of another tag
SAME_TAG = [
    "image-2020-04-22-11-08-58-87-cropped-left-top",
    "image-2020-04-22-11-09-36-69-cropped-left-top",
    "image-2020-04-22-11-10-04-70-cropped-left-top",
]
OTHER_TAG = "image-2020-04-22-10-15-03-04-cropped-left-top"
# each retake of the tag: another exposure, another JPEG quality
RETAKES = [(1.0, 95), (1.06, 85), (0.94, 75)]


def photos_of_one_tag(metal_tags: Path, dest: Path) -> Path:
    """A YOLO folder ``dest``: three retakes of one real photo (``SAME_TAG``) and a real
    photo of another tag (``OTHER_TAG``), labels empty."""
    from PIL import Image

    sample = sorted((metal_tags / "images").glob("*.jpg"))
    data = yolo_folder(metal_tags, dest, [])
    tag = np.asarray(Image.open(sample[6]), dtype=np.float32)
    for stem, (gain, quality) in zip(SAME_TAG, RETAKES, strict=True):
        retake = np.clip(tag * gain, 0, 255).astype(np.uint8)
        Image.fromarray(retake).save(data / "images" / f"{stem}.jpg", quality=quality)
    shutil.copyfile(sample[11], data / "images" / f"{OTHER_TAG}.jpg")
    for stem in [*SAME_TAG, OTHER_TAG]:
        (data / "labels" / f"{stem}.txt").write_text("")
    return data


def test_offset_finds_how_far_the_marks_moved() -> None:
    rng = np.random.default_rng(0)
    marks = np.zeros((300, 450), dtype=np.float32)
    marks[rng.integers(0, 300, 40), rng.integers(0, 450, 40)] = 255.0
    moved = np.roll(marks, (7, -12), axis=(0, 1))  # 7 px down, 12 px left
    assert bench_label_agreement.offset(marks, moved) == (-12, 7)
    assert bench_label_agreement.offset(marks, marks) == (0, 0)


def test_photos_of_one_tag_are_one_part(metal_tags: Path, tmp_path: Path) -> None:
    data = photos_of_one_tag(metal_tags, tmp_path / "yolo")
    images = [data / "images" / f"{stem}.jpg" for stem in [*SAME_TAG, OTHER_TAG]]
    assert bench_label_agreement.same_parts(images, 0.97) == [[0, 1, 2], [3]]
    # at a similarity no two photos reach, every photo is its own part
    assert bench_label_agreement.same_parts(images, 0.99999) == [[0], [1], [2], [3]]


def test_agreement_counts_boxes_matched_one_to_one() -> None:
    box = [100.0, 100.0, 160.0, 180.0]
    other = [300.0, 50.0, 340.0, 120.0]
    both = np.array([box, other])
    rows = [(both, both), (both[:1], both), (both, both[:1])]
    by_iou = bench_label_agreement.agreement_by_iou(rows)
    # truth boxes 2 + 2 + 1, matched 2 + 1 + 1 (the extra box matches nothing)
    assert by_iou == [pytest.approx(0.8)] * 10
    # a box 3 px off: IoU 0.905, matched up to the 0.90 threshold, not at 0.95
    shifted = [(np.array([[103.0, 100.0, 163.0, 180.0]]), np.array([box]))]
    assert bench_label_agreement.agreement_by_iou(shifted) == [1.0] * 9 + [0.0]
    assert (
        bench_label_agreement.agreement_by_iou([(np.zeros((0, 4)), np.zeros((0, 4)))]) == [1.0] * 10
    )


@pytest.mark.integration
def test_bench_label_agreement_reports_a_folder(metal_tags: Path, tmp_path: Path) -> None:
    # given a YOLO folder with three photos of one tag, one of them labelled without
    # the tag's second scratch, and a photo of another tag
    stems = [*SAME_TAG, OTHER_TAG]
    data = photos_of_one_tag(metal_tags, tmp_path / "yolo")
    two = "0 0.467778 0.510000 0.180000 0.260000\n0 0.691111 0.416667 0.124444 0.260000\n"
    for stem, label in zip(stems, [two, two, two.splitlines()[0], ""], strict=True):
        (data / "labels" / f"{stem}.txt").write_text(label)
    out = tmp_path / "agreement.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_label_agreement"]
    cmd += ["--data", str(data), "--folds", "3", "--out", str(out)]
    # when the labels are compared
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # then the three photos are one part, compared both ways: the photo without the
    # second scratch disagrees in 4 of 6 comparisons, and 8 of 10 boxes are matched
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["photos"], result["parts"], result["parts_photographed_again"]) == (4, 2, 1)
    everything = result["rows"][0]
    assert everything["photos of"] == "all"
    assert (everything["photos"], everything["comparisons"], everything["counts_differ"]) == (
        3,
        6,
        4,
    )
    assert everything["agree50"] == pytest.approx(0.8)
    assert [r["photos of"] for r in result["rows"][1:]] == ["block 0", "block 1", "block 2"]
    assert "| all | 3 | 6 | 4 | 0.800 |" in done.stdout
    # and a folder that is not a YOLO folder is one line, exit 2
    bad = subprocess.run(
        [*cmd[:3], "--data", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "images/ and labels/" in bad.stderr


def test_consensus_copy_draws_the_train_labels_of_a_part_one_way(
    metal_tags: Path, tmp_path: Path
) -> None:
    # given a version whose train split holds two photos of one tag, labelled with two
    # boxes and with one, and whose test split holds a third photo of it with one box
    # (each capture whole: the tag's retake and three crops of other tags)
    src = photos_of_one_tag(metal_tags, tmp_path / "src")
    (src / "images" / f"{OTHER_TAG}.jpg").unlink()
    (src / "labels" / f"{OTHER_TAG}.txt").unlink()
    sample = sorted((metal_tags / "images").glob("*.jpg"))
    others = iter(photo for index, photo in enumerate(sample) if index != 6)
    for stem in SAME_TAG:
        for corner in ("left-bottom", "right-top", "right-bottom"):
            crop = next(others)
            name = stem.replace("left-top", corner)
            shutil.copyfile(crop, src / "images" / f"{name}.jpg")
            shutil.copyfile(
                metal_tags / "labels" / f"{crop.stem}.txt", src / "labels" / f"{name}.txt"
            )
    two = "0 0.467778 0.510000 0.180000 0.260000\n0 0.691111 0.416667 0.124444 0.260000\n"
    one = two.splitlines()[0] + "\n"
    for stem, label in zip(SAME_TAG, [two, one, one], strict=True):
        (src / "labels" / f"{stem}.txt").write_text(label)
    version = tmp_path / "v1"
    build_dataset(src, version, {"train": 2, "test": 1})
    before = {p.name: p.read_text() for p in (version / "labels").iterdir()}
    # when the train labels are drawn one way
    copy = tmp_path / "consensus"
    changed = bench_label_agreement.consensus_copy(version, copy)
    # then the photo with one box takes the two boxes of its twin (the medoid: its
    # boxes find the one box, not the other way round), and nothing else of the part
    after = {p.name: p.read_text() for p in (copy / "labels").iterdir()}
    assert after[f"{SAME_TAG[1]}.txt"] == two
    assert after[f"{SAME_TAG[0]}.txt"] == two
    assert changed == sum(after[name] != before[name] for name in before) >= 1
    # the test photo, and the version itself, are untouched
    assert after[f"{SAME_TAG[2]}.txt"] == one
    assert {p.name: p.read_text() for p in (version / "labels").iterdir()} == before
    assert (copy / "manifest.json").read_text() == (version / "manifest.json").read_text()

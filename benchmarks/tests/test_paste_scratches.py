"""Real scratch marks pasted into train photos (benchmarks/paste_scratches.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import paste_scratches
from qcloop.contracts import DatasetManifest
from qcloop.storage import sha256_file
from tests.components.datasets import build_dataset

ROOT = Path(__file__).resolve().parents[2]


def _flat(shade: float = 70.0) -> tuple[np.ndarray, np.ndarray]:
    gray = np.full((300, 450), shade, dtype=np.float32)
    return gray, gray.copy()


def test_a_mark_goes_to_a_free_flat_place_of_its_own_shade() -> None:
    # given a flat plate of grey 70 with a label over its left half, and one mark: a
    # 40 x 10 bright stroke that was on a plate of grey 75
    gray, shading = _flat()
    stroke = np.zeros((10, 40), dtype=np.float32)
    stroke[5, :] = 90.0
    bank = [paste_scratches.Mark(stroke, 75.0, 0)]
    label = [np.array([0, 0, 225, 300])]
    # when it is pasted
    out, pasted = paste_scratches.paste_marks(
        gray, shading, label, bank, 1, np.random.default_rng(0)
    )
    # then it lies in the right half, its box the mark's size, and only there is the
    # photo brighter, by the mark
    [(class_id, (x1, y1, x2, y2))] = pasted
    assert class_id == 0 and (x2 - x1, y2 - y1) == (40, 10) and x1 >= 225
    assert np.array_equal(out[y1:y2, x1:x2] - gray[y1:y2, x1:x2], stroke) or np.array_equal(
        out[y1:y2, x1:x2] - gray[y1:y2, x1:x2], stroke[::-1]
    )
    outside = np.ones_like(gray, dtype=bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], gray[outside])


def test_a_mark_with_no_fitting_place_is_left_out() -> None:
    stroke = np.full((10, 40), 90.0, dtype=np.float32)
    rng = np.random.default_rng(0)
    gray, shading = _flat()
    # a plate far brighter than the mark's own background: no place of its shade
    bank = [paste_scratches.Mark(stroke, 180.0, 0)]
    out, pasted = paste_scratches.paste_marks(gray, shading, [], bank, 2, rng)
    assert pasted == [] and np.array_equal(out, gray)
    # every place taken by a label
    bank = [paste_scratches.Mark(stroke, 70.0, 0)]
    out, pasted = paste_scratches.paste_marks(gray, shading, [[0, 0, 450, 300]], bank, 2, rng)
    assert pasted == [] and np.array_equal(out, gray)
    # an edge across the whole photo (plate above, bright background below): no flat place
    shading[150:, :] = 200.0
    gray[150:, :] = 200.0
    bank = [paste_scratches.Mark(np.full((200, 40), 90.0, dtype=np.float32), 70.0, 0)]
    _, pasted = paste_scratches.paste_marks(gray, shading, [], bank, 1, rng)
    assert pasted == []


def test_paste_copy_adds_scratches_to_train_photos_only(metal_tags: Path, tmp_path: Path) -> None:
    # given a real version: two captures in train, one in test
    version = tmp_path / "v1"
    manifest = build_dataset(metal_tags, version, {"train": 2, "test": 1})
    before = {p.name: p.read_bytes() for p in sorted(version.rglob("*")) if p.is_file()}
    # when one mark is pasted into every labelled train photo
    copy = tmp_path / "pasted"
    total = paste_scratches.paste_copy(version, copy, per_photo=1, seed=0)
    # then the train photos carry one more box each where a place was found, and are
    # brighter inside it; the test photos and labels are the version's, byte for byte
    pasted = DatasetManifest.load(copy / "manifest.json")
    assert pasted.images[0].split == "train" and total >= 1
    added = 0
    for old, new in zip(manifest.images, pasted.images, strict=True):
        photo, label = copy / new.file, copy / new.label_file
        lines = label.read_text().splitlines()
        assert new.boxes == len(lines) and new.sha256 == sha256_file(photo)
        if new.split == "test" or old.boxes == 0:
            assert photo.read_bytes() == before[Path(old.file).name]
            assert label.read_bytes() == before[Path(old.label_file).name]
            continue
        assert lines[: old.boxes] == before[Path(old.label_file).name].decode().splitlines()
        added += new.boxes - old.boxes
        for line in lines[old.boxes :]:
            _, cx, cy, w, h = (float(v) for v in line.split())
            x1, y1 = round((cx - w / 2) * new.width), round((cy - h / 2) * new.height)
            x2, y2 = round((cx + w / 2) * new.width), round((cy + h / 2) * new.height)
            inside = np.asarray(Image.open(photo).convert("L"), np.float32)[y1:y2, x1:x2]
            original = np.asarray(Image.open(version / old.file).convert("L"), np.float32)
            assert (inside - original[y1:y2, x1:x2]).max() > 20  # the mark's bright pixels
    assert added == total and pasted.counts["train"].boxes == manifest.counts["train"].boxes + total
    assert pasted.counts["test"] == manifest.counts["test"]
    # the version itself is untouched, and the same seed pastes the same marks
    assert {p.name: p.read_bytes() for p in sorted(version.rglob("*")) if p.is_file()} == before
    again = tmp_path / "again"
    assert paste_scratches.paste_copy(version, again, per_photo=1, seed=0) == total
    for img in pasted.images:
        assert (again / img.label_file).read_text() == (copy / img.label_file).read_text()


def test_paste_copy_refuses_a_split_with_no_scratch(metal_tags: Path, tmp_path: Path) -> None:
    version = tmp_path / "v1"
    build_dataset(metal_tags, version, {"train": 1, "test": 1})
    for label in (version / "labels").iterdir():
        label.write_text("")
    with pytest.raises(ValueError, match="no labelled scratch in the train split"):
        paste_scratches.paste_copy(version, tmp_path / "pasted")
    assert not (tmp_path / "pasted").exists()
    with pytest.raises(ValueError, match="per_photo 0"):
        paste_scratches.paste_copy(version, tmp_path / "pasted", per_photo=0)


def test_cli_writes_the_copy_and_a_preview(metal_tags: Path, tmp_path: Path) -> None:
    version = tmp_path / "v1"
    manifest = build_dataset(metal_tags, version, {"train": 2, "test": 1})
    labelled = sum(1 for img in manifest.images if img.split == "train" and img.boxes)
    script = "benchmarks.paste_scratches"
    out, preview = tmp_path / "pasted", tmp_path / "preview.png"
    cmd = [sys.executable, "-m", script, "--data", str(version), "--out", str(out)]
    done = subprocess.run(
        [*cmd, "--preview", str(preview)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "marks pasted into the train photos" in done.stdout
    # the first four labelled train photos (450 x 300), two a row
    assert labelled >= 4 and Image.open(preview).size == (900, 600)
    bad = subprocess.run(
        [sys.executable, "-m", script, "--data", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "no manifest.json" in bad.stderr

"""The ``paste`` recipe: real scratch marks pasted anew into train photos as they load
(benchmarks/paste.py), on real captures and ultralytics' own training dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from benchmarks.paste import (
    Mark,
    PastingDataset,
    box_pixels,
    gray_and_shading,
    marks_in,
    paste_into,
    use_paste,
)
from components.data import copy_dataset, write_data_yaml

IMGSZ = 480


def _datasets(dataset: Path, out: Path) -> tuple[Any, dict[str, Any]]:
    """A trainer stand-in whose ``build_dataset`` is ultralytics' own (as DetectionTrainer
    builds it), and the data dict, for a copy of dataset version ``dataset``."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(write_data_yaml(out, copy_dataset(dataset, out))))
    cfg = get_cfg(overrides={"imgsz": IMGSZ, "cache": False})

    def build_dataset(img_path: str, mode: str = "train", batch: int | None = None) -> Any:
        return build_yolo_dataset(
            cfg, img_path, batch or 4, data, mode=mode, rect=mode == "val", stride=32
        )

    return SimpleNamespace(build_dataset=build_dataset), data


def test_paste_into_brightens_a_free_place_only_and_leaves_the_photo_as_it_was(
    tiny_dataset: Path,
) -> None:
    # given two real labelled captures: the marks of one, the other photo as BGR
    import cv2

    from qcloop.contracts import DatasetManifest
    from qcloop.yolo import parse_label_file

    manifest = DatasetManifest.load(tiny_dataset / "manifest.json")
    labelled = [img for img in manifest.images if img.boxes]
    source, target = labelled[0], labelled[-1]

    def boxes_of(img: Any) -> np.ndarray:
        found = parse_label_file(tiny_dataset / img.label_file, 1)[0]
        return np.array([(b.cx, b.cy, b.w, b.h) for b in found], np.float32)

    gray, shading = gray_and_shading(cv2.imread(str(tiny_dataset / source.file)))
    rows = boxes_of(source)
    bank = marks_in(gray, shading, box_pixels(rows, 450, 300), [0] * len(rows))
    assert bank and all(isinstance(m, Mark) and m.pixels.max() > 0 for m in bank)
    photo = cv2.imread(str(tiny_dataset / target.file))
    before = photo.copy()
    labels = boxes_of(target)
    # when two marks are pasted beside its labels
    out, classes, boxes = paste_into(photo, labels, bank, 2, np.random.default_rng(1))
    # then the photo given is untouched (ultralytics may cache it); the new one is
    # brighter inside the pasted boxes only, by the same amount on every channel, and
    # no pasted box overlaps a label
    assert np.array_equal(photo, before)
    assert len(classes) == len(boxes) >= 1 and set(classes) == {0.0}
    pixels = box_pixels(boxes, 450, 300)
    inside = np.zeros(photo.shape[:2], bool)
    for x1, y1, x2, y2 in pixels:
        inside[y1:y2, x1:x2] = True
        assert not any(
            x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2
            for b in box_pixels(labels, 450, 300)
        )
    diff = out.astype(int) - photo.astype(int)
    assert (diff >= 0).all() and diff[inside].max() > 20 and not diff[~inside].any()
    assert np.array_equal(diff[..., 0], diff[..., 1]) and np.array_equal(diff[..., 1], diff[..., 2])


def test_the_training_dataset_pastes_fresh_marks_each_load_and_val_is_untouched(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="benchmarks")
    # given ultralytics' dataset builder, taken over by the paste callback
    from ultralytics.data.dataset import YOLODataset

    trainer, data = _datasets(tiny_dataset, tmp_path / "data")
    use_paste(trainer, count=1)
    train = trainer.build_dataset(data["train"], "train", 4)
    val = trainer.build_dataset(data["val"], "val", 4)
    assert type(train) is PastingDataset and type(val) is YOLODataset
    assert len(train.paste_bank) >= 5
    assert f"paste: {len(train.paste_bank)} scratch marks" in caplog.text
    assert all(im is None for im in train.ims) and not train.buffer, "no image left cached"
    # when each train photo is loaded twice
    counts = [len(stored["bboxes"]) for stored in train.labels]
    gained, fresh = 0, 0
    for index, stored in enumerate(train.labels):
        first = train.get_image_and_label(index)
        second = train.get_image_and_label(index)
        count = len(stored["bboxes"])
        if count == 0:  # then a defect-free photo stays as it is
            assert len(first["instances"]) == 0 and len(first["cls"]) == 0
            continue
        # a labelled one gets one more box (where a place was found), its labels first,
        # and another mark on the next load
        assert len(first["instances"]) in (count, count + 1)
        assert len(first["cls"]) == len(first["instances"])
        assert np.allclose(first["instances"].bboxes[:count], stored["bboxes"])
        gained += len(first["instances"]) - count
        fresh += not np.array_equal(first["img"], second["img"])
    labelled = sum(1 for stored in train.labels if len(stored["bboxes"]))
    assert gained >= labelled * 3 // 4 and fresh >= labelled * 3 // 4
    # the stored labels are the files' (nothing accumulates), and the whole augmentation
    # (mosaic included) takes the pasted boxes
    assert [len(stored["bboxes"]) for stored in train.labels] == counts
    sample = train[0]
    assert sample["img"].shape[0] == 3 and len(sample["cls"]) == len(sample["bboxes"])


def test_a_train_split_without_marks_trains_unchanged(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="benchmarks")
    import shutil

    version = tmp_path / "v1"
    shutil.copytree(tiny_dataset, version)
    for label in (version / "labels").iterdir():
        label.write_text("")
    trainer, data = _datasets(version, tmp_path / "data")
    use_paste(trainer, count=1)
    train = trainer.build_dataset(data["train"], "train", 4)
    assert "no scratch mark in the train labels" in caplog.text
    label = train.get_image_and_label(0)
    assert len(label["instances"]) == 0


def test_the_paste_recipe_trains_through_train_variant(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # one real epoch with a loader worker process (as on a GPU): the marks are pasted
    # in the worker, and the run gives weights
    from benchmarks.training import bench_recipe, train_variant

    caplog.set_level(logging.INFO)
    assert bench_recipe("paste") == {"paste": 1}
    best = train_variant(
        tiny_dataset,
        tmp_path,
        recipe="paste",
        model_size="n",
        epochs=1,
        imgsz=160,
        batch=4,
        workers=1,
    )
    assert best.is_file()
    out = caplog.text
    assert "paste@n: 1 epochs" in out and "paste: " in out and "scratch marks" in out

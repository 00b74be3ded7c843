"""Tiny real dataset versions for the training room's tests (copies of metal-tags captures)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qcloop.contracts import DatasetManifest, ManifestImage, Split, count_splits
from qcloop.storage import sha256_file
from qcloop.yolo import capture_group, image_size


def captures(src: Path) -> dict[str, list[Path]]:
    """Images of a YOLO folder grouped by capture, only whole captures (4 crops), sorted."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for image in sorted((src / "images").glob("*.jpg")):
        groups[capture_group(image.stem)].append(image)
    return {g: members for g, members in sorted(groups.items()) if len(members) == 4}


def build_dataset(
    src: Path, dest: Path, splits: dict[Split, int], *, version: str = "v1"
) -> DatasetManifest:
    """Copy whole captures of YOLO folder ``src`` into a dataset version folder ``dest``.

    ``splits`` says how many captures go to each split, e.g. ``{"train": 2, "test": 1}``.
    """
    whole = iter(captures(src).items())
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "classes.txt", dest / "classes.txt")
    images = []
    for split, n in splits.items():
        for group, members in (next(whole) for _ in range(n)):
            images += [_copy_item(src, dest, image, split, group) for image in members]
    manifest = DatasetManifest(
        version=version,
        class_names=(src / "classes.txt").read_text().split(),
        source=f"test copy of {src.name}",
        images=images,
        counts=count_splits(images),
    )
    manifest.save(dest / "manifest.json")
    return manifest


def _copy_item(src: Path, dest: Path, image: Path, split: Split, group: str) -> ManifestImage:
    label = src / "labels" / f"{image.stem}.txt"
    shutil.copyfile(image, dest / "images" / image.name)
    shutil.copyfile(label, dest / "labels" / label.name)
    width, height = image_size(image)
    return ManifestImage(
        file=f"images/{image.name}",
        label_file=f"labels/{label.name}",
        split=split,
        group=group,
        sha256=sha256_file(image),
        width=width,
        height=height,
        boxes=sum(1 for line in label.read_text().splitlines() if line.strip()),
    )


def yolo_folder(src: Path, dest: Path, images: Iterable[Path]) -> Path:
    """A plain YOLO folder ``dest``: ``images`` of YOLO folder ``src``, their labels and
    ``src``'s classes.txt."""
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    shutil.copyfile(src / "classes.txt", dest / "classes.txt")
    for image in images:
        shutil.copyfile(image, dest / "images" / image.name)
        label = src / "labels" / f"{image.stem}.txt"
        shutil.copyfile(label, dest / "labels" / label.name)
    return dest


def scored_image(
    boxes: list[list[float]], conf: list[float], truth: list[list[float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's (predicted xyxy, confidences, labelled xyxy), as the benchmark scripts
    score them (``benchmarks.bench_snapshots.labelled_predictions``)."""
    return (
        np.array(boxes, dtype=float).reshape(-1, 4),
        np.array(conf, dtype=float),
        np.array(truth, dtype=float).reshape(-1, 4),
    )

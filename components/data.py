"""A dataset version as ultralytics reads it: a private copy, its split lists and ``data.yaml``.

Ultralytics writes ``*.cache`` files beside the labels, so training always runs on a
copy of the dataset folder (``copy_dataset``), never on the DVC checkout.
``write_data_yaml`` turns the manifest's splits into the ``data.yaml`` and the
per-split image lists that ultralytics reads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml

from qcloop.contracts import DatasetManifest
from qcloop.errors import DatasetError
from qcloop.settings import Settings

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def materialize_version(settings: Settings, version: str, dest: Path) -> DatasetManifest:
    """Copy dataset ``version`` into ``dest`` (new folder) with the step's settings."""
    from qcloop.dataset import materialize

    log.info("materialising dataset %s into %s", version, dest)
    return materialize(settings, version, Path(dest))


def load_manifest(dataset_dir: Path) -> DatasetManifest:
    """Read ``manifest.json`` of a dataset folder; ``DatasetError`` if it is missing."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{dataset_dir}: no {MANIFEST}; materialize a dataset version into this folder "
            "first (qcloop.dataset.materialize)"
        )
    return DatasetManifest.load(path)


def copy_dataset(dataset_dir: Path, dest: Path) -> DatasetManifest:
    """Copy a dataset folder to ``dest`` (without caches) and check every listed file."""
    manifest = load_manifest(dataset_dir)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(dataset_dir, dest, ignore=shutil.ignore_patterns("*.cache", ".*"))
    for img in manifest.images:
        _check_pair(dest, img.file, img.label_file)
    return manifest


def _check_pair(root: Path, image: str, label: str) -> None:
    expected = _label_for(image)
    if label != expected:
        raise DatasetError(
            f"{root / MANIFEST}: label_file '{label}' of '{image}' must be '{expected}' "
            "(ultralytics finds labels by replacing images/ with labels/)"
        )
    for rel in (image, label):
        if not (root / rel).is_file():
            raise DatasetError(f"{root}: '{rel}' is listed in {MANIFEST} but missing")


def _label_for(image: str) -> str:
    head, sep, tail = image.rpartition("images/")
    if not sep:
        return "<an images/ path>"
    return head + "labels/" + tail.rsplit(".", 1)[0] + ".txt"


def split_lists(root: Path, manifest: DatasetManifest) -> dict[str, list[str]]:
    """Absolute image paths of each split (``train``, ``val``, ``test``)."""
    root = Path(root).resolve()
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for img in manifest.images:
        lists[img.split].append(str(root / img.file))
    return lists


def write_data_yaml(root: Path, manifest: DatasetManifest, *, for_training: bool = True) -> Path:
    """Write ``<split>.txt`` image lists and ``data.yaml`` into ``root``; return the yaml.

    An empty val split borrows the test images, an empty test split the val
    images (logged); an empty train split (when ``for_training``), or no val and no
    test images, is a ``DatasetError``.
    """
    root = Path(root).resolve()
    lists = split_lists(root, manifest)
    if not lists["train"] and not for_training:
        lists["train"] = lists["test"] or lists["val"]  # ultralytics wants the key; never read
    if not lists["train"]:
        raise DatasetError(
            f"dataset {manifest.version} at {root}: the train split is empty; "
            "add labelled images before training"
        )
    if not lists["val"] and not lists["test"]:
        raise DatasetError(
            f"dataset {manifest.version} at {root}: val and test splits are both empty; "
            "add images of other captures so that something can be evaluated"
        )
    for split, other in (("val", "test"), ("test", "val")):
        if not lists[split]:
            log.info("%s: %s split is empty, using %s as %s", manifest.version, split, other, split)
            lists[split] = lists[other]
    for split, paths in lists.items():
        (root / f"{split}.txt").write_text("".join(p + "\n" for p in paths))
    data = {
        "path": str(root),
        "train": "train.txt",
        "val": "val.txt",
        "test": "test.txt",
        "names": dict(enumerate(manifest.class_names)),
    }
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out

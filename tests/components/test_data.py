"""Dataset for training: data.yaml from the manifest, the copy and its checks."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from components.data import copy_dataset, load_manifest, write_data_yaml
from qcloop.contracts import DatasetManifest, count_splits
from qcloop.errors import DatasetError


def _with_splits(manifest: DatasetManifest, mapping: dict[str, str]) -> DatasetManifest:
    """The same manifest with splits renamed (whole groups move together)."""
    images = [
        i.model_copy(update={"split": mapping.get(i.split, i.split)}) for i in manifest.images
    ]
    return manifest.model_copy(update={"images": images, "counts": count_splits(images)})


def test_data_yaml_lists_every_split_with_absolute_paths(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    # given a copy of a dataset with train and test images and an empty val split
    manifest = copy_dataset(tiny_dataset, tmp_path / "data")
    # when
    data_yaml = write_data_yaml(tmp_path / "data", manifest)
    # then
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "scratch"}
    assert Path(data["path"]) == (tmp_path / "data").resolve()
    lists = {s: (tmp_path / "data" / data[s]).read_text().split() for s in ("train", "val", "test")}
    assert len(lists["train"]) == 8 and len(lists["test"]) == 4
    assert lists["val"] == lists["test"], "an empty val split borrows the test images"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in lists["train"])


def test_empty_test_split_borrows_val(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="components")
    manifest = _with_splits(copy_dataset(tiny_dataset, tmp_path / "d"), {"test": "val"})
    data = yaml.safe_load(write_data_yaml(tmp_path / "d", manifest).read_text())
    assert (tmp_path / "d" / data["test"]).read_text() == (tmp_path / "d" / data["val"]).read_text()
    assert "test split is empty, using val" in caplog.text


@pytest.mark.parametrize(
    ("mapping", "message"),
    [({"train": "val"}, "train split is empty"), ({"test": "train"}, "both empty")],
)
def test_unusable_splits_are_dataset_errors(
    tiny_dataset: Path, tmp_path: Path, mapping: dict[str, str], message: str
) -> None:
    manifest = _with_splits(load_manifest(tiny_dataset), mapping)
    with pytest.raises(DatasetError, match=message):
        write_data_yaml(tmp_path, manifest)


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no manifest.json; materialize"):
        copy_dataset(tmp_path, tmp_path / "copy")


def test_missing_image_is_named(tiny_dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    victim = sorted((broken / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"images/{victim.name}' is listed"):
        copy_dataset(broken, tmp_path / "copy")

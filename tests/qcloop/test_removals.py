"""Removing an image from the next dataset versions, and undoing it, with the history kept."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qcloop.dataset import current_manifest, import_yolo_folder, materialize
from qcloop.errors import DatasetError
from qcloop.removals import removal_events, removal_state, remove_images, restore_images
from qcloop.settings import Settings, StoreSettings
from qcloop.storage import open_store, sha256_file
from qcloop.synthetic import generate_yolo_dataset

pytestmark = pytest.mark.integration
QUIET = {"progress": lambda _: None}


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        store=StoreSettings(path=tmp_path / "store"),
        dvc={"remote": str(tmp_path / "remote")},
    )


def _files(settings: Settings) -> set[str]:
    manifest = current_manifest(settings.workspace.resolve())
    assert manifest is not None
    return {i.file for i in manifest.images}


def test_a_removed_image_leaves_the_next_version_and_comes_back_when_restored(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    settings.workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=settings.workspace, check=True)
    first = generate_yolo_dataset(tmp_path / "a", shots=2, seed=1)
    v1, _ = import_yolo_folder(settings, first, commit=True, **QUIET)
    wrong = v1.images[0]
    labels = (settings.workspace / "data" / wrong.label_file).read_text()
    # when an operator removes it, by file name, and the next import brings it again
    (made,) = remove_images(settings, [Path(wrong.file).name], reason="wrong part", by="ana")
    assert (made.sha256, made.version, made.entry, made.labels) == (
        wrong.sha256,
        "v1",
        wrong,
        labels,
    )
    v2, created = import_yolo_folder(settings, first, commit=True, **QUIET)
    # then the next version leaves it out, and the commit says so
    assert (created, v2.version, v2.parent) == (True, "v2", "v1")
    assert _files(settings) == {i.file for i in v1.images} - {wrong.file}
    message = subprocess.run(
        ["git", "log", "-1", "--format=%s"], cwd=settings.workspace, capture_output=True, text=True
    ).stdout
    assert message.startswith("dataset v2: +0 images, 0 replaced, 0 relabelled, 1 removed, ")
    # and v1 still holds it: a version never changes
    assert wrong in materialize(settings, "v1", tmp_path / "v1").images
    # another import that brings nothing new makes no version; removing again changes nothing
    assert import_yolo_folder(settings, first, **QUIET)[1] is False
    assert remove_images(settings, [wrong.sha256], reason="again", by="ana", **QUIET) == []
    # when the removal is undone, a later import of other images brings it back as it was
    other = generate_yolo_dataset(tmp_path / "b", shots=1, seed=2)
    for path in (other / "images").iterdir():
        path.rename(path.with_name("b-" + path.name))
    for path in (other / "labels").iterdir():
        path.rename(path.with_name("b-" + path.name))
    restore_images(settings, [wrong.file], reason="right part after all", by="ben", **QUIET)
    v3, created = import_yolo_folder(settings, other, **QUIET)
    assert (created, v3.version) == (True, "v3")
    back = next(i for i in v3.images if i.sha256 == wrong.sha256)
    assert back == wrong  # same file, split, group and boxes
    assert (settings.workspace / "data" / wrong.label_file).read_text() == labels
    assert sha256_file(settings.workspace / "data" / wrong.file) == wrong.sha256
    # and the history keeps both events, with who and why
    history = removal_events(open_store(settings.store))
    assert [(e.action, e.by, e.reason) for e in history] == [
        ("remove", "ana", "wrong part"),
        ("restore", "ben", "right part after all"),
    ]
    assert removal_state(open_store(settings.store)).removed == {}


def test_an_image_not_yet_in_a_version_is_kept_out_by_its_sha256(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    folder = generate_yolo_dataset(tmp_path / "a", shots=2, seed=1)
    private = sorted((folder / "images").iterdir())[0]
    remove_images(settings, [sha256_file(private)], reason="privacy request", by="dpo", **QUIET)
    v1, _ = import_yolo_folder(settings, folder, **QUIET)
    assert f"images/{private.name}" not in {i.file for i in v1.images}
    assert len(v1.images) == 7


def test_unknown_names_are_refused_naming_them(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    import_yolo_folder(settings, generate_yolo_dataset(tmp_path / "a", shots=1), **QUIET)
    with pytest.raises(DatasetError, match=r"image 'nope\.jpg' is not in dataset v1"):
        remove_images(settings, ["nope.jpg"], reason="x", by="y", **QUIET)
    with pytest.raises(DatasetError, match=r"image 'nope\.jpg' is not removed"):
        restore_images(settings, ["nope.jpg"], reason="x", by="y", **QUIET)
    assert removal_events(open_store(settings.store)) == []
    shutil.rmtree(settings.workspace)

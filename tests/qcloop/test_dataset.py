"""Dataset versions with real DVC: import, stable splits, atomic writes, any version back."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from qcloop.dataset import assign_splits, current_manifest, import_yolo_folder, materialize
from qcloop.errors import DatasetError
from qcloop.settings import Settings, StoreSettings
from qcloop.storage import list_raw_images, open_store
from qcloop.synthetic import generate_yolo_dataset
from qcloop.yolo import capture_group

pytestmark = pytest.mark.integration


def _settings(
    tmp_path: Path, store: StoreSettings | None = None, remote: str | None = None
) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        store=store or StoreSettings(path=tmp_path / "store"),
        dvc={
            "remote": remote or str(tmp_path / "remote"),
            "endpoint_url": store.endpoint if store else None,
        },
    )


def test_splits_are_balanced_deterministic_and_keep_placed_groups() -> None:
    groups = [f"group-{i}" for i in range(40)]
    placed = assign_splits(groups, {})
    assert Counter(placed.values()) == {"train": 28, "val": 6, "test": 6}
    assert assign_splits(reversed(groups), {}) == placed  # input order does not matter
    assert set(assign_splits(groups[:3], {}).values()) == {"train", "test"}  # test before val
    more = assign_splits([f"new-{i}" for i in range(10)], Counter(placed.values()))
    assert (
        Counter(more.values()) == {"train": 7, "val": 2, "test": 1}
        or sum(1 for s in more.values() if s != "train") == 3
    )


def test_import_then_new_version_keeps_splits(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = generate_yolo_dataset(tmp_path / "a", shots=6, seed=1)
    v1, created = import_yolo_folder(settings, first, progress=lambda _: None)
    assert (v1.version, created, v1.parent) == ("v1", True, None)
    assert (settings.workspace / "data.dvc").is_file()
    assert len(list_raw_images(open_store(settings.store))) == 24
    for img in v1.images:  # crops of one shot share a split
        assert {i.split for i in v1.images if i.group == img.group} == {img.split}

    again, created = import_yolo_folder(settings, first, progress=lambda _: None)
    assert (again.version, created) == ("v1", False)

    second = generate_yolo_dataset(tmp_path / "b", shots=3, seed=2)
    v2, created = import_yolo_folder(settings, second, progress=lambda _: None)
    assert (v2.version, v2.parent, len(v2.images)) == ("v2", "v1", 36)
    old = {i.file: i.split for i in v1.images}
    assert all(old[i.file] == i.split for i in v2.images if i.file in old)


def test_any_version_materialises_from_the_remote(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    import_yolo_folder(
        settings, generate_yolo_dataset(tmp_path / "a", shots=2, seed=1), progress=print
    )
    import_yolo_folder(
        settings, generate_yolo_dataset(tmp_path / "b", shots=2, seed=2), progress=print
    )
    shutil.rmtree(settings.workspace / "data")
    v1 = materialize(settings, "v1", tmp_path / "out-v1")
    assert (v1.version, len(v1.images)) == ("v1", 8)
    assert all((tmp_path / "out-v1" / i.file).is_file() for i in v1.images)
    with pytest.raises(DatasetError, match=r"'v9' does not exist.*v1, v2"):
        materialize(settings, "v9", tmp_path / "out-v9")


def test_failed_push_leaves_previous_version(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    import_yolo_folder(
        settings, generate_yolo_dataset(tmp_path / "a", shots=2, seed=1), progress=print
    )
    pointer = (settings.workspace / "data.dvc").read_text()
    (tmp_path / "a-file").write_text("not a folder")
    unusable = str(tmp_path / "a-file" / "remote")
    broken = settings.model_copy(
        update={"dvc": settings.dvc.model_copy(update={"remote": unusable})}
    )
    with pytest.raises(DatasetError, match="dvc"):
        import_yolo_folder(
            broken, generate_yolo_dataset(tmp_path / "b", shots=2, seed=2), progress=print
        )
    assert (settings.workspace / "data.dvc").read_text() == pointer
    assert current_manifest(settings.workspace).version == "v1"  # type: ignore[union-attr]
    leftovers = [p.name for p in settings.workspace.iterdir() if p.name.startswith(".data")]
    assert leftovers == []


def test_bad_folder_creates_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    folder = generate_yolo_dataset(tmp_path / "a", shots=1, seed=1)
    next((folder / "labels").iterdir()).write_text("0 0.5 0.5 0 0\n")
    with pytest.raises(DatasetError, match="no area"):
        import_yolo_folder(settings, folder, progress=print)
    assert not (settings.workspace / "data").exists()


def test_class_list_must_match_parent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    import_yolo_folder(
        settings, generate_yolo_dataset(tmp_path / "a", shots=1, seed=1), progress=print
    )
    other = generate_yolo_dataset(tmp_path / "b", shots=1, seed=2)
    (other / "classes.txt").write_text("dent\n")
    with pytest.raises(DatasetError, match="differ from version v1"):
        import_yolo_folder(settings, other, progress=print)


def test_real_data_on_s3(
    tmp_path: Path, metal_tags: Path, s3_store_settings: StoreSettings
) -> None:
    settings = _settings(
        tmp_path, store=s3_store_settings, remote=f"s3://{s3_store_settings.bucket}/dvc"
    )
    manifest, _ = import_yolo_folder(settings, metal_tags, progress=print)
    assert len(manifest.images) == 16
    assert sum(c.boxes for c in manifest.counts.values()) == 35
    assert sum(c.negatives for c in manifest.counts.values()) == 3
    # 4 captures split 70/15/15 by capture: 3 to train, 1 to test, none left for val
    assert {s: c.images for s, c in manifest.counts.items()} == {"train": 12, "val": 0, "test": 4}
    splits_of: dict[str, set[str]] = {}
    for image in manifest.images:
        splits_of.setdefault(image.group, set()).add(image.split)
    assert len(splits_of) == 4 and all(len(splits) == 1 for splits in splits_of.values())
    shutil.rmtree(settings.workspace / "data")
    again = materialize(settings, "v1", tmp_path / "pulled")
    assert again == manifest


def test_commit_names_what_changed(tmp_path: Path) -> None:
    import subprocess

    settings = _settings(tmp_path)
    settings.workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=settings.workspace, check=True)
    folder = generate_yolo_dataset(tmp_path / "a", shots=2, seed=1)
    import_yolo_folder(settings, folder, progress=print, commit=True)
    label = next((folder / "labels").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")  # one more box on one image
    import_yolo_folder(settings, folder, progress=print, commit=True)
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=settings.workspace, capture_output=True, text=True
    ).stdout.splitlines()
    assert log[0].startswith("dataset v2: +0 images, 0 replaced, 1 relabelled, +1 boxes")
    assert log[1].startswith("dataset v1: +8 images")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=settings.workspace, capture_output=True, text=True
    ).stdout.split()
    assert "data.dvc" in tracked and not any(t.startswith("data/") for t in tracked)
    # the DVC repository's own files went in with the first version; nothing is left staged
    assert {".dvc/config", ".dvcignore", ".dvc/.gitignore"} <= set(tracked)
    assert ".dvc/config.local" not in tracked
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=settings.workspace, capture_output=True, text=True
    ).stdout
    assert not [line for line in status.splitlines() if line[:1] not in (" ", "?")], status
    manifest = current_manifest(settings.workspace)
    assert manifest is not None and manifest.source == str(folder)


def test_splits_never_move_whatever_the_next_imports_hold(tmp_path: Path) -> None:
    # Given a pool of captures and random sequences of imports, as labelling rounds make
    # them: new captures, ones imported before (the whole history beside the new images),
    # and relabelled ones (a box removed)
    pool = generate_yolo_dataset(tmp_path / "pool", shots=12, seed=5)
    stems = sorted(p.stem for p in (pool / "images").glob("*.jpg"))
    captures = sorted({capture_group(s) for s in stems})
    for seed in range(3):
        rng = random.Random(seed)
        settings = _settings(tmp_path / f"seq-{seed}")
        first_split: dict[str, str] = {}
        seen: list[str] = []
        for step in range(4):
            fresh = rng.sample([c for c in captures if c not in seen], 2)
            old = rng.sample(seen, min(len(seen), rng.randint(0, 4)))
            seen += fresh
            folder = tmp_path / f"seq-{seed}-import-{step}"
            for sub in ("images", "labels"):
                (folder / sub).mkdir(parents=True)
            shutil.copyfile(pool / "classes.txt", folder / "classes.txt")
            for stem in (s for s in stems if capture_group(s) in {*fresh, *old}):
                shutil.copyfile(pool / "images" / f"{stem}.jpg", folder / "images" / f"{stem}.jpg")
                lines = (pool / "labels" / f"{stem}.txt").read_text().splitlines(keepends=True)
                if capture_group(stem) in old and rng.random() < 0.5:
                    lines = lines[1:]  # relabelled
                (folder / "labels" / f"{stem}.txt").write_text("".join(lines))
            # When it is imported as the next version
            manifest, _ = import_yolo_folder(settings, folder, progress=lambda _: None)
            # Then every image keeps the split of the version it first entered, and the
            # crops of one capture share one split
            for image in manifest.images:
                assert first_split.setdefault(image.file, image.split) == image.split, (
                    seed,
                    step,
                    image.file,
                )
                assert {i.split for i in manifest.images if i.group == image.group} == {image.split}

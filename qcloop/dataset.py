"""Labelled dataset versions: YOLO layout + manifest, versioned with DVC.

A version lives in ``<workspace>/data`` (tracked by ``data.dvc``):

    data/images/<stem>.jpg   data/labels/<stem>.txt   data/classes.txt   data/manifest.json

Versions are written atomically: the new version is built and validated in a
staging folder beside ``data/``, swapped in by rename, then ``dvc add`` + push;
if any step fails the previous ``data/`` and ``data.dvc`` come back.
Splits are assigned per capture group (deterministically, balanced to
70/15/15), and an image keeps the split it had in the parent version, so an
image never moves between splits.
Each version's DVC pointer is also kept in the object store
(``datasets/<version>.dvc``) so any machine can materialise any version; the
store, not the workspace, says which versions exist and names the next one
(``qcloop.versions``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from qcloop import dvc
from qcloop.contracts import (
    SPLITS,
    DatasetManifest,
    ManifestImage,
    RawImageSidecar,
    Split,
    count_splits,
)
from qcloop.errors import DatasetError, ObjectNotFound
from qcloop.removals import drop_removed, put_back, removal_state
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, open_store, put_raw_image, raw_key, sha256_bytes
from qcloop.versions import (
    DATA_DIR,
    MANIFEST,
    POINTER_PREFIX,
    Progress,
    checkout_newest,
    current_manifest,
    known_versions,
    newest_version,
    next_version,
    pointer_key,
    restoring_workspace,
    write_pointer,
)
from qcloop.yolo import YoloItem, capture_group, scan_yolo_folder

log = logging.getLogger(__name__)

__all__ = [
    "DATA_DIR",
    "MANIFEST",
    "POINTER_PREFIX",
    "assign_splits",
    "change_summary",
    "commit_pointer",
    "current_manifest",
    "import_yolo_folder",
    "known_versions",
    "materialize",
    "materialize_split",
    "newest_version",
]

SPLIT_RATIOS: dict[Split, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
DVC_REPO_FILES = (".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore")


def assign_splits(new_groups: Iterable[str], existing: Mapping[Split, int]) -> dict[str, Split]:
    """Splits for capture groups not seen before; ``existing`` counts the groups already placed.

    Groups are taken in the order of their hash, each going to the split furthest
    below its share (ties: train, test, val - a small set gets a test group before a
    val group). The result depends only on the groups and the parent, so it is the
    same on every machine; groups already placed never move.
    """
    counts = {split: existing.get(split, 0) for split in SPLITS}
    preference: tuple[Split, ...] = ("train", "test", "val")
    placed: dict[str, Split] = {}
    for group in sorted(set(new_groups), key=lambda g: hashlib.sha256(g.encode()).hexdigest()):
        total = sum(counts.values()) + 1
        split = max(
            preference, key=lambda s: (SPLIT_RATIOS[s] * total - counts[s], -preference.index(s))
        )
        counts[split] += 1
        placed[group] = split
    return placed


def _entry(item: YoloItem, split: Split, key: str, digest: str) -> ManifestImage:
    return ManifestImage(
        file=f"images/{item.stem}{item.image.suffix.lower()}",
        label_file=f"labels/{item.stem}.txt",
        split=split,
        group=capture_group(item.stem),
        sha256=digest,
        width=item.width,
        height=item.height,
        boxes=len(item.boxes),
        raw_key=key,
    )


def _label_text(item: YoloItem) -> str:
    return "".join(box.line() + "\n" for box in item.boxes)


def _stage(
    staging: Path,
    parent_dir: Path | None,
    parent: DatasetManifest | None,
    items: list[YoloItem],
    store: ObjectStore,
    source: str,
    progress: Progress,
) -> tuple[list[ManifestImage], int]:
    """Write parent + new items into ``staging``; return the entries and the number changed.

    Removed images (``qcloop.removals``) are left out, restored ones come back.
    """
    (staging / "images").mkdir(parents=True)
    (staging / "labels").mkdir()
    entries = {img.file: img for img in (parent.images if parent else [])}
    group_splits = {img.group: img.split for img in entries.values()}
    existing = Counter(group_splits.values())
    removals = removal_state(store)
    changed = drop_removed(entries, removals, progress)
    # only captures the parent has not placed: a folder that holds old images next to new
    # ones (every labelling round's export) must not move the old ones to another split
    new_groups = {capture_group(i.stem) for i in items} - set(group_splits)
    group_splits.update(assign_splits(new_groups, existing))
    if parent_dir is not None:
        for img in entries.values():
            shutil.copy2(parent_dir / img.file, staging / img.file)
            shutil.copy2(parent_dir / img.label_file, staging / img.label_file)
    for n, item in enumerate(items, start=1):
        data = item.image.read_bytes()
        digest = sha256_bytes(data)
        if digest in removals.removed:
            continue
        ext = item.image.suffix.lower().lstrip(".")
        key = raw_key(digest, ext)
        sidecar = RawImageSidecar(
            key=key,
            sha256=digest,
            content_type="image/png" if ext == "png" else "image/jpeg",
            width=item.width,
            height=item.height,
            source=source,
            reason="import",
            original_name=item.image.name,
        )
        put_raw_image(store, data, sidecar)
        split = group_splits[capture_group(item.stem)]
        entry = _entry(item, split, key, digest)
        old = entries.get(entry.file)
        label = _label_text(item)
        if old is None or old.sha256 != digest or (staging / entry.label_file).read_text() != label:
            changed += 1
        entries[entry.file] = entry
        (staging / entry.file).write_bytes(data)
        (staging / entry.label_file).write_text(label)
        if n % 50 == 0 or n == len(items):
            progress(f"  staged {n}/{len(items)} images")
    changed += put_back(staging, entries, group_splits, removals, store)
    return sorted(entries.values(), key=lambda e: e.file), changed


def import_yolo_folder(
    settings: Settings,
    source: Path,
    *,
    progress: Progress = log.info,
    commit: bool = False,
    label_source: str | None = None,
) -> tuple[DatasetManifest, bool]:
    """Import a YOLO folder into the raw store and a new dataset version.

    The parent is the newest version in the object store (checked out into the
    workspace first if the workspace holds another), and the new version takes the
    next number there, so a fresh pod or a checkout behind the store never reuses a
    name. Returns the manifest of the (new or unchanged) current version and whether
    a new version was created; a folder that adds nothing creates no version. With
    ``commit`` (and a git workspace) ``data.dvc`` is committed with a message that
    says what changed. ``label_source`` names where the labels came from in the
    manifest and the commit message (default: the folder), e.g. a labelling round's
    project and export when the folder is a temporary one.
    """
    workspace = settings.workspace.resolve()
    label_source = label_source or str(source)
    progress(f"validating YOLO folder {source}")
    names, items = scan_yolo_folder(Path(source))
    dvc.ensure_repo(workspace, settings)
    store = open_store(settings.store)
    parent, versions = checkout_newest(workspace, settings, store, progress)
    if parent and parent.class_names != names:
        raise DatasetError(
            f"{source}/classes.txt: classes {names} differ from version {parent.version}'s "
            f"{parent.class_names}; keep the same class list (append new classes at the end)"
        )
    staging = workspace / f".{DATA_DIR}.staging-{uuid.uuid4().hex[:8]}"
    try:
        progress(f"importing {len(items)} images into the raw store ({settings.store.kind})")
        data_dir = workspace / DATA_DIR
        entries, changed = _stage(
            staging, data_dir if parent else None, parent, items, store, label_source, progress
        )
        if parent and changed == 0:
            progress(f"nothing new: dataset stays at {parent.version}")
            return parent, False
        manifest = DatasetManifest(
            version=next_version(versions),
            parent=parent.version if parent else None,
            class_names=names,
            source=label_source,
            images=entries,
            counts=count_splits(entries),
        )
        (staging / "classes.txt").write_text("\n".join(names) + "\n")
        manifest.save(staging / MANIFEST)
        _swap_in(workspace, staging, settings, manifest, store, progress)
        if commit:
            commit_pointer(workspace, change_summary(parent, manifest), progress)
        return manifest, True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(
    workspace: Path,
    staging: Path,
    settings: Settings,
    manifest: DatasetManifest,
    store: ObjectStore,
    progress: Progress,
) -> None:
    """Replace data/ by staging, dvc add + push, then the pointer (create-only).

    On any failure - also when another import or round made the same version
    meanwhile - the previous data/ and data.dvc come back.
    """
    with restoring_workspace(workspace):
        staging.rename(workspace / DATA_DIR)
        progress(f"dvc add + push {manifest.version} to {dvc.remote_url(settings)}")
        text = dvc.add_and_push(workspace, settings, DATA_DIR)
        write_pointer(store, manifest.version, text)


def change_summary(parent: DatasetManifest | None, new: DatasetManifest) -> str:
    """One line naming what a version changed against its parent."""
    old = {i.file: i for i in parent.images} if parent else {}
    added = sum(1 for i in new.images if i.file not in old)
    replaced = sum(1 for i in new.images if i.file in old and old[i.file].sha256 != i.sha256)
    relabelled = sum(
        1
        for i in new.images
        if i.file in old and old[i.file].sha256 == i.sha256 and old[i.file].boxes != i.boxes
    )
    boxes = sum(i.boxes for i in new.images) - sum(i.boxes for i in old.values())
    removed = len(old.keys() - {i.file for i in new.images})
    return (
        f"dataset {new.version}: +{added} images, {replaced} replaced, {relabelled} relabelled, "
        + (f"{removed} removed, " if removed else "")
        + f"{boxes:+d} boxes ({len(new.images)} images in all) from {new.source}"
    )


def commit_pointer(workspace: Path, message: str, progress: Progress = log.info) -> bool:
    """``git commit`` of ``data.dvc`` in a git workspace; False if not one.

    The files that make the workspace a DVC repository (``.gitignore``, ``.dvcignore``,
    ``.dvc/config``, ``.dvc/.gitignore``, as ``dvc init`` wrote them) go into the same
    commit, so that a clone can pull the version; the remote (``.dvc/config.local``) never.
    """
    if not (workspace / ".git").exists():
        progress("workspace is not a git repository: data.dvc not committed")
        return False
    paths = [p for p in (f"{DATA_DIR}.dvc", *DVC_REPO_FILES) if (workspace / p).exists()]
    known = subprocess.run(["git", "config", "user.email"], cwd=workspace, capture_output=True)
    who = (
        []
        if known.returncode == 0
        else ["-c", "user.name=qcloop", "-c", "user.email=qcloop@localhost"]
    )
    for args in (["add", *paths], [*who, "commit", "-m", message, "--", *paths]):
        done = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
        if done.returncode != 0:
            raise DatasetError(
                f"{workspace}: the version is pushed but `git {' '.join(args[:1])}` of data.dvc "
                f"failed: {(done.stderr or done.stdout).strip()[-300:]}; commit data.dvc by hand"
            )
    progress(f"committed data.dvc: {message}")
    return True


def materialize(settings: Settings, version: str, dest: Path) -> DatasetManifest:
    """Copy dataset ``version`` into ``dest`` (a new folder) and return its manifest."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DatasetError(f"{dest}: not empty; give a new folder to materialise {version} into")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.rmdir()
    local = current_manifest(settings.workspace.resolve())
    if local is not None and local.version == version:
        shutil.copytree(
            settings.workspace.resolve() / DATA_DIR, dest, ignore=shutil.ignore_patterns("*.cache")
        )
    else:
        try:
            pointer = open_store(settings.store).get_bytes(pointer_key(version)).decode()
        except ObjectNotFound:
            known = ", ".join(known_versions(settings)) or "none"
            raise DatasetError(
                f"dataset version '{version}' does not exist (known: {known}); "
                "import data first (`qcloop dataset import`)"
            ) from None
        dvc.pull_pointer(pointer, dest, settings)
    manifest = DatasetManifest.load(dest / MANIFEST)
    if manifest.version != version:
        raise DatasetError(f"{dest}: holds {manifest.version}, expected {version}")
    return manifest


def materialize_split(settings: Settings, version: str, split: str, dest: Path) -> int:
    """Write one split of ``version`` into ``dest`` as a plain YOLO folder; return its images.

    ``dest`` gets ``images/``, ``labels/`` and ``classes.txt`` of that split only (no
    manifest: it is not a dataset version), e.g. to score any model on the test
    split with ``qcloop eval``. The folder appears whole or not at all.
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DatasetError(f"{dest}: not empty; give a new folder for the {split} split")
    staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    try:
        manifest = materialize(settings, version, staging / "all")
        chosen = [i for i in manifest.images if i.split == split]
        if not chosen:
            raise DatasetError(f"dataset {version}: the {split} split is empty")
        out = staging / "split"
        (out / "images").mkdir(parents=True)
        (out / "labels").mkdir(parents=True)
        for img in chosen:
            for rel in (img.file, img.label_file):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(staging / "all" / rel, out / rel)
        (out / "classes.txt").write_text("".join(n + "\n" for n in manifest.class_names))
        if dest.exists():
            dest.rmdir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(chosen)

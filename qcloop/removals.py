"""Taking images out of the next dataset versions, and putting them back, with their history.

A removal (a photo of the wrong part, a duplicate, a privacy request) or its undo is an
event, written create-only to the object store (``datasets/removals/<time>-<id>.json``):
what (the image's sha256, and its manifest entry and labels in the version it was
removed from), who, when, why. Events are never changed or deleted, so the history
stays; the last event of an image says whether it is out.

Every later version (``qcloop dataset import``, a labelling round) leaves a removed
image out, whatever the folder or the export holds, and sync-in makes no task of it.
An image restored comes back in the next version with the labels it had, unless the
folder brings it anew. Versions made before keep it: a version never changes.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from qcloop import dvc
from qcloop.contracts import SHA256_RE, Contract, DatasetManifest, ManifestImage, Split, utcnow
from qcloop.errors import DatasetError
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, open_store
from qcloop.versions import DATA_DIR, checkout_newest

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

REMOVALS_PREFIX = "datasets/removals/"
_SHA = re.compile(SHA256_RE)


class RemovalEvent(Contract):
    """One removal of an image from the next versions, or its undo."""

    action: Literal["remove", "restore"]
    sha256: str = Field(pattern=SHA256_RE)
    reason: str = Field(min_length=1, description="why: wrong part, duplicate, privacy, ...")
    by: str = Field(min_length=1, description="who asked for it")
    at: datetime = Field(default_factory=utcnow)
    version: str | None = Field(default=None, description="the newest version holding it")
    entry: ManifestImage | None = Field(default=None, description="its entry in that version")
    labels: str | None = Field(default=None, description="its YOLO label file there")


@dataclass(frozen=True)
class RemovalState:
    """Which images are out (their removal) and which were put back (their last removal)."""

    removed: dict[str, RemovalEvent]
    restored: dict[str, RemovalEvent]


def removal_events(store: ObjectStore) -> list[RemovalEvent]:
    """Every removal and restore in the store, oldest first."""
    return [
        RemovalEvent.from_json(store.get_bytes(key), source=store.url(key))
        for key in store.list(REMOVALS_PREFIX)
        if key.endswith(".json")
    ]


def removal_state(store: ObjectStore) -> RemovalState:
    """The state the events leave: the last event of each image decides."""
    removed: dict[str, RemovalEvent] = {}
    restored: dict[str, RemovalEvent] = {}
    for event in removal_events(store):
        if event.action == "remove":
            removed[event.sha256] = event
            restored.pop(event.sha256, None)
        elif event.sha256 in removed:
            restored[event.sha256] = removed.pop(event.sha256)
    return RemovalState(removed, restored)


def record(store: ObjectStore, event: RemovalEvent) -> str:
    """Write ``event`` create-only under a key that sorts by time; the key."""
    key = f"{REMOVALS_PREFIX}{event.at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.json"
    if not store.put_bytes_if_absent(key, event.to_json().encode(), "application/json"):
        raise DatasetError(f"{store.url(key)}: already exists; run the command again")
    return key


def find_entry(manifest: DatasetManifest | None, name: str) -> ManifestImage | None:
    """The image ``name`` names in ``manifest``: sha256, raw key, file, file name or stem."""
    for image in manifest.images if manifest else []:
        file = Path(image.file)
        if name in (image.sha256, image.raw_key, image.file, file.name, file.stem):
            return image
    return None


def removal_of(
    manifest: DatasetManifest | None,
    data_dir: Path,
    name: str,
    *,
    reason: str,
    by: str,
) -> RemovalEvent:
    """The removal event of image ``name`` of ``manifest`` (checked out in ``data_dir``).

    An image not in the version can be removed by its sha256 only (it may come later,
    from labelling); any other name that the version does not hold is a ``DatasetError``.
    """
    entry = find_entry(manifest, name)
    if entry is None and not _SHA.match(name):
        where = f"dataset {manifest.version}" if manifest else "the store (no version yet)"
        raise DatasetError(
            f"image '{name}' is not in {where}; name it by file (images/x.jpg), file name, "
            "stem, raw key or sha256 (`qcloop dataset pull latest` lists them in manifest.json)"
        )
    labels = (data_dir / entry.label_file).read_text() if entry else None
    return RemovalEvent(
        action="remove",
        sha256=entry.sha256 if entry else name,
        reason=reason,
        by=by,
        version=manifest.version if manifest and entry else None,
        entry=entry,
        labels=labels,
    )


def restore_of(state: RemovalState, name: str, *, reason: str, by: str) -> RemovalEvent:
    """The undo of the removal of ``name`` (sha256, file, file name or stem of its entry)."""
    for sha, event in state.removed.items():
        entry = event.entry
        names = {sha} | (
            {entry.file, Path(entry.file).name, Path(entry.file).stem, entry.raw_key or sha}
            if entry
            else set()
        )
        if name in names:
            return RemovalEvent(action="restore", sha256=sha, reason=reason, by=by)
    raise DatasetError(
        f"image '{name}' is not removed; `qcloop labelling removed` lists the removed images"
    )


def drop_removed(entries: dict[str, ManifestImage], state: RemovalState, progress: Progress) -> int:
    """Take the removed images out of ``entries`` (file -> entry); how many went."""
    gone = [file for file, image in entries.items() if image.sha256 in state.removed]
    for file in gone:
        progress(f"  leaving out {file}: removed ({state.removed[entries[file].sha256].reason})")
        del entries[file]
    return len(gone)


def put_back(
    staging: Path,
    entries: dict[str, ManifestImage],
    group_splits: dict[str, Split],
    state: RemovalState,
    store: ObjectStore,
) -> int:
    """Bring restored images that ``entries`` lacks back into ``staging``; how many came back.

    Each comes back with its entry and labels of the version it was removed from, in
    its capture's split, its bytes from the raw store.
    """
    present = {image.sha256 for image in entries.values()}
    back = 0
    for sha, event in state.restored.items():
        entry = event.entry
        if sha in present or entry is None or entry.raw_key is None or entry.file in entries:
            continue
        split = group_splits.setdefault(entry.group, entry.split)
        restored = entry.model_copy(update={"split": split})
        (staging / entry.file).write_bytes(store.get_bytes(entry.raw_key))
        (staging / entry.label_file).write_text(event.labels or "")
        entries[entry.file] = restored
        back += 1
    return back


def remove_images(
    settings: Settings, names: list[str], *, reason: str, by: str, progress: Progress = log.info
) -> list[RemovalEvent]:
    """Take images out of the next versions; the removals made (already removed: none).

    ``names`` are resolved against the newest version in the store (checked out into
    the workspace first, as an import does); all are checked before any is recorded.
    """
    workspace = settings.workspace.resolve()
    store = open_store(settings.store)
    dvc.ensure_repo(workspace, settings)
    manifest, _ = checkout_newest(workspace, settings, store, progress)
    state = removal_state(store)
    events = [removal_of(manifest, workspace / DATA_DIR, n, reason=reason, by=by) for n in names]
    made: dict[str, RemovalEvent] = {}
    for event in events:
        if event.sha256 in state.removed or event.sha256 in made:
            progress(f"{event.sha256[:12]}: removed already")
            continue
        record(store, event)
        made[event.sha256] = event
        progress(f"removed {event.entry.file if event.entry else event.sha256} ({reason})")
    return list(made.values())


def restore_images(
    settings: Settings, names: list[str], *, reason: str, by: str, progress: Progress = log.info
) -> list[RemovalEvent]:
    """Undo removals: the images come back in the next version; the restores made."""
    store = open_store(settings.store)
    state = removal_state(store)
    events = {e.sha256: e for e in (restore_of(state, n, reason=reason, by=by) for n in names)}
    for event in events.values():
        record(store, event)
        progress(f"restored {event.sha256[:12]}: back in the next version ({reason})")
    return list(events.values())

"""Which dataset versions exist: the object store is the one source of truth.

Each version's DVC pointer is kept in the store (``datasets/<vN>.dvc``). A new
version builds on the newest version in the store, whatever the workspace has
checked out (a fresh pod has nothing, a laptop may be behind the cluster), takes
the next free number there, and its pointer is written create-only: a version,
once made, never changes - the training cache is keyed on its name. Numbering
from a local checkout would name a version again and overwrite a shared one.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from qcloop import dvc
from qcloop.contracts import DatasetManifest
from qcloop.errors import DatasetError
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, open_store

DATA_DIR = "data"
MANIFEST = "manifest.json"
POINTER_FILE = f"{DATA_DIR}.dvc"
POINTER_PREFIX = "datasets/"
Progress = Callable[[str], None]


def current_manifest(workspace: Path) -> DatasetManifest | None:
    """Manifest of the version checked out in ``workspace/data``, if any."""
    path = workspace / DATA_DIR / MANIFEST
    return DatasetManifest.load(path) if path.is_file() else None


def pointer_key(version: str) -> str:
    """Where the object store keeps the DVC pointer of ``version``."""
    return f"{POINTER_PREFIX}{version}.dvc"


def version_number(version: str) -> int | None:
    """12 for ``v12``; None for a name that is not ``v<number>``."""
    return int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else None


def store_versions(store: ObjectStore) -> list[str]:
    """Versions whose pointer is in ``store``, oldest first (numeric: v9 before v10)."""
    names = [k[len(POINTER_PREFIX) : -4] for k in store.list(POINTER_PREFIX) if k.endswith(".dvc")]
    return sorted(names, key=lambda v: version_number(v) or 0)


def known_versions(settings: Settings) -> list[str]:
    """Dataset versions whose pointer is in the object store, oldest first."""
    return store_versions(open_store(settings.store))


def newest_version(settings: Settings) -> str:
    """The newest dataset version in the object store now; ``DatasetError`` if none."""
    versions = known_versions(settings)
    if not versions:
        raise DatasetError(
            "dataset version 'latest': the object store holds no dataset version yet; "
            "import data first (qcloop dataset import)"
        )
    return versions[-1]


def next_version(versions: Iterable[str]) -> str:
    """The name after the highest number in ``versions`` (v10 after v9); v1 if none."""
    return f"v{max((version_number(v) or 0 for v in versions), default=0) + 1}"


@contextmanager
def restoring_workspace(workspace: Path) -> Iterator[None]:
    """Move ``data/`` aside and keep ``data.dvc``; if the block fails, put both back.

    The block writes the new ``data/`` and ``data.dvc``; on success the old copy goes.
    """
    data_dir, pointer = workspace / DATA_DIR, workspace / POINTER_FILE
    backup = workspace / f".{DATA_DIR}.previous-{uuid.uuid4().hex[:8]}"
    old_pointer = pointer.read_text() if pointer.is_file() else None
    if data_dir.exists():
        data_dir.rename(backup)
    try:
        yield
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        if backup.exists():
            backup.rename(data_dir)
        if old_pointer is None:
            pointer.unlink(missing_ok=True)
        else:
            pointer.write_text(old_pointer)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def checkout_newest(
    workspace: Path, settings: Settings, store: ObjectStore, progress: Progress
) -> tuple[DatasetManifest | None, list[str]]:
    """Put the newest version in the store into ``workspace/data``; its manifest and all versions.

    The workspace keeps what it has if that is the store's newest version (same
    pointer); otherwise the newest pointer becomes ``data.dvc`` and is pulled (the
    old ``data/`` comes back if that fails). None if the store holds no version.
    A workspace version the store does not know (a wiped store, or another store)
    is an error: building on it would give a new version a name already used.
    """
    versions = store_versions(store)
    local = current_manifest(workspace)
    pointer = workspace / POINTER_FILE
    local_pointer = pointer.read_text() if pointer.is_file() else None
    newest = versions[-1] if versions else None
    highest = max((version_number(v) or 0 for v in versions), default=0)
    if local is not None and (version_number(local.version) or 0) > highest:
        _unknown_to_store(workspace, store, f"{DATA_DIR}/{MANIFEST} ({local.version})", versions)
    if newest is None:
        if local_pointer is not None:
            _unknown_to_store(workspace, store, POINTER_FILE, versions)
        return None, versions
    text = store.get_bytes(pointer_key(newest)).decode()
    same = local is not None and local.version == newest
    if same and (local_pointer or "").split() == text.split():
        return local, versions
    if local is None:
        where = f"workspace has no {DATA_DIR}/"
    elif same:
        where = f"workspace's {newest} differs from the store's"
    else:
        where = f"workspace at {local.version}"
    progress(f"{where}, store at {newest}: checking out {newest} as the parent")
    with restoring_workspace(workspace):
        pointer.write_text(text)
        dvc.run_dvc(workspace, settings, "pull", "--quiet", "-r", dvc.REMOTE_NAME, POINTER_FILE)
        manifest = current_manifest(workspace)
        if manifest is None or manifest.version != newest:
            raise DatasetError(
                f"{store.url(pointer_key(newest))}: pulls "
                f"{manifest.version if manifest else 'no manifest'}, expected {newest}; "
                "the pointer or the DVC remote is damaged"
            )
    return manifest, versions


def _unknown_to_store(
    workspace: Path, store: ObjectStore, what: str, versions: list[str]
) -> NoReturn:
    known = ", ".join(versions) or "none"
    raise DatasetError(
        f"{workspace / what}: a dataset version the object store {store.url(POINTER_PREFIX)} "
        f"does not know (it holds: {known}); the store was wiped or the workspace belongs to "
        "another store. Check `store` in `qcloop config`, or move data/ and data.dvc out of "
        "the workspace so that the next version builds on the store's newest (v1 if none)"
    )


def write_pointer(store: ObjectStore, version: str, text: str) -> None:
    """Keep ``version``'s DVC pointer in the store, create-only: a version never changes.

    ``DatasetError`` if the key is taken: another import or labelling round made
    ``version`` since this one looked. The same bytes already there count as done
    (this write itself, retried by the HTTP client after a lost reply).
    """
    key, data = pointer_key(version), text.encode()
    if store.put_bytes_if_absent(key, data, "text/yaml") or store.get_bytes(key) == data:
        return
    raise DatasetError(
        f"dataset version {version} was created meanwhile (by another import or labelling "
        f"round); run again to build on it ({store.url(key)} already exists)"
    )

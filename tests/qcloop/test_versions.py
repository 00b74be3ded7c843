"""Version names come from the shared store, never from a local checkout (real DVC).

A labelling round runs in a fresh pod (empty workspace), a laptop may be behind
the cluster: both must build on the store's newest version, take the next free
number and never overwrite a version that exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qcloop import dvc
from qcloop.contracts import DatasetManifest
from qcloop.dataset import current_manifest, import_yolo_folder, known_versions
from qcloop.errors import DatasetError
from qcloop.settings import Settings, StoreSettings
from qcloop.storage import open_store
from qcloop.synthetic import generate_yolo_dataset
from qcloop.versions import next_version, pointer_key
from tests.qcloop.test_dataset import _settings

pytestmark = pytest.mark.integration
QUIET = {"progress": lambda _: None}


def _elsewhere(settings: Settings, workspace: Path) -> Settings:
    """The same store and DVC remote, another workspace (a pod, a laptop)."""
    return settings.model_copy(update={"workspace": workspace})


def _pointers(settings: Settings) -> dict[str, bytes]:
    store = open_store(settings.store)
    return {v: store.get_bytes(pointer_key(v)) for v in known_versions(settings)}


def _workspace_state(workspace: Path) -> tuple[str, dict[str, bytes]]:
    """``data.dvc`` and every file under ``data/`` (DVC's own cache files aside)."""
    files = {
        p.relative_to(workspace).as_posix(): p.read_bytes()
        for p in sorted((workspace / "data").rglob("*"))
        if p.is_file() and not p.name.endswith(".cache")
    }
    return (workspace / "data.dvc").read_text(), files


def test_a_fresh_workspace_builds_on_the_newest_version_in_the_store(tmp_path: Path) -> None:
    first = _settings(tmp_path)
    import_yolo_folder(first, generate_yolo_dataset(tmp_path / "a", shots=2, seed=1), **QUIET)
    v2, _ = import_yolo_folder(
        first, generate_yolo_dataset(tmp_path / "b", shots=2, seed=2), **QUIET
    )
    before = _pointers(first)
    pod = _elsewhere(first, tmp_path / "pod-workspace")  # empty: no data/, no data.dvc
    lines: list[str] = []

    v3, created = import_yolo_folder(
        pod, generate_yolo_dataset(tmp_path / "c", shots=1, seed=3), progress=lines.append
    )

    assert (created, v3.version, v3.parent) == (True, "v3", "v2")
    assert "workspace has no data/, store at v2: checking out v2 as the parent" in lines
    kept = {i.file: i for i in v3.images}
    assert all(kept[i.file] == i for i in v2.images)  # every image of v2, same bytes and split
    assert len(v3.images) == len(v2.images) + 4
    assert all((pod.workspace / "data" / i.file).is_file() for i in v3.images)
    after = _pointers(first)
    assert {v: after[v] for v in before} == before  # v1 and v2 untouched
    assert list(after) == ["v1", "v2", "v3"]


def test_a_workspace_behind_the_store_checks_out_the_newest_first(tmp_path: Path) -> None:
    laptop = _settings(tmp_path)
    import_yolo_folder(laptop, generate_yolo_dataset(tmp_path / "a", shots=2, seed=1), **QUIET)
    at_v1 = tmp_path / "v1-checkout"
    shutil.copytree(laptop.workspace, at_v1)
    cluster = _elsewhere(laptop, tmp_path / "cluster")  # a round on the cluster makes v2
    v2, _ = import_yolo_folder(
        cluster, generate_yolo_dataset(tmp_path / "b", shots=2, seed=2), **QUIET
    )
    assert v2.version == "v2"
    shutil.rmtree(laptop.workspace)
    shutil.copytree(at_v1, laptop.workspace)  # the laptop is still at v1
    v2_pointer = _pointers(laptop)["v2"]
    lines: list[str] = []

    v3, _ = import_yolo_folder(
        laptop, generate_yolo_dataset(tmp_path / "c", shots=1, seed=3), progress=lines.append
    )

    assert (v3.version, v3.parent) == ("v3", "v2")
    assert "workspace at v1, store at v2: checking out v2 as the parent" in lines
    assert {i.file for i in v2.images} <= {i.file for i in v3.images}
    assert _pointers(laptop)["v2"] == v2_pointer
    assert current_manifest(laptop.workspace).version == "v3"  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_version_made_meanwhile_is_never_overwritten(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "s3":
        s3: StoreSettings = request.getfixturevalue("s3_store_settings")
        settings = _settings(tmp_path, store=s3, remote=f"s3://{s3.bucket}/dvc")
    else:
        settings = _settings(tmp_path)
    import_yolo_folder(settings, generate_yolo_dataset(tmp_path / "a", shots=1, seed=1), **QUIET)
    before = _workspace_state(settings.workspace)
    store = open_store(settings.store)
    ours = generate_yolo_dataset(tmp_path / "ours", shots=1, seed=2)
    made: list[DatasetManifest] = []

    def another_round_wins(line: str) -> None:  # while this import pushes, a round makes v2
        if line.startswith("dvc add + push v2") and not made:
            pod = _elsewhere(settings, tmp_path / "pod")
            theirs = generate_yolo_dataset(tmp_path / "theirs", shots=1, seed=3)
            made.append(import_yolo_folder(pod, theirs, **QUIET)[0])

    with pytest.raises(DatasetError, match="dataset version v2 was created meanwhile"):
        import_yolo_folder(settings, ours, progress=another_round_wins)

    assert made[0].version == "v2"
    theirs_pointer = (tmp_path / "pod" / "data.dvc").read_bytes()
    assert store.get_bytes(pointer_key("v2")) == theirs_pointer
    assert _workspace_state(settings.workspace) == before
    assert not [p for p in settings.workspace.iterdir() if p.name.startswith(".data")]
    v3, created = import_yolo_folder(settings, ours, **QUIET)  # run again: builds on theirs
    assert (created, v3.version, v3.parent) == (True, "v3", "v2")
    assert {i.file for i in made[0].images} <= {i.file for i in v3.images}
    assert store.get_bytes(pointer_key("v2")) == theirs_pointer


def test_numbers_count_numerically_v11_after_v10(tmp_path: Path) -> None:
    assert next_version([]) == "v1"
    assert next_version(["v1", "v2", "v9"]) == "v10"
    assert next_version(["v10", "v9", "v2", "latest"]) == "v11"
    settings = _settings(tmp_path)
    import_yolo_folder(settings, generate_yolo_dataset(tmp_path / "a", shots=1, seed=1), **QUIET)
    store = open_store(settings.store)
    data = settings.workspace / "data"  # turn the workspace's v1 into a real v10...
    manifest = DatasetManifest.load(data / "manifest.json")
    manifest.model_copy(update={"version": "v10", "parent": "v9"}).save(data / "manifest.json")
    store.put_bytes(pointer_key("v10"), dvc.add_and_push(settings.workspace, settings).encode())
    for n in range(2, 10):  # ...with v2..v9 in the store; "v9" sorts after "v10" as a string
        store.put_bytes(pointer_key(f"v{n}"), b"not pulled")
    assert known_versions(settings)[-2:] == ["v9", "v10"]

    v11, _ = import_yolo_folder(
        _elsewhere(settings, tmp_path / "fresh"),
        generate_yolo_dataset(tmp_path / "b", shots=1, seed=2),
        **QUIET,
    )

    assert (v11.version, v11.parent) == ("v11", "v10")


def test_a_workspace_version_the_store_does_not_know_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    import_yolo_folder(settings, generate_yolo_dataset(tmp_path / "a", shots=1, seed=1), **QUIET)
    before = _workspace_state(settings.workspace)
    shutil.rmtree(settings.store.path)  # the store was wiped (or settings name another)

    with pytest.raises(DatasetError, match=r"manifest.json \(v1\).*does not know.*data\.dvc"):
        import_yolo_folder(
            settings, generate_yolo_dataset(tmp_path / "b", shots=1, seed=2), **QUIET
        )

    assert known_versions(settings) == []
    assert _workspace_state(settings.workspace) == before

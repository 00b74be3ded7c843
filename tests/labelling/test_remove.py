"""Removing a task's image from the next dataset versions through the CLI, and undoing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import cli
from qcloop.settings import Settings
from qcloop.storage import sha256_file
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.import_labels import import_yolo
from qcloop_labelling.settings import LabelStudioSettings
from tests.labelling.helpers import metal_tag_images, put_feedback_image, yolo_subset

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]
QUIET = {"progress": lambda _: None}


def test_remove_a_task_image_from_the_next_version_and_restore_it(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    def run(*argv: str) -> dict:
        """``qcloop ARGV``: exit 0 and one JSON line on stdout."""
        capfd.readouterr()
        assert cli.main(list(argv)) == 0, capfd.readouterr().err
        (line,) = capfd.readouterr().out.splitlines()
        return dict(json.loads(line))

    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__URL", ls_settings.url)
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__TOKEN", ls_settings.token.get_secret_value())
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__PROJECT_TITLE", ls_settings.project_title)
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(settings.store.path))
    monkeypatch.setenv("QCLOOP_WORKSPACE", str(settings.workspace))
    monkeypatch.setenv("QCLOOP_DVC__REMOTE", str(settings.dvc.remote))
    # given four labelled tasks in dataset v1
    import_yolo(settings, client, project_id, yolo_subset(tmp_path / "yolo", 4, skip=4), **QUIET)
    assert run("labelling", "round")["version"] == "v1"
    task = min(m["id"] for m in client.task_metas(project_id))
    sha = client.task(task)["data"]["sha256"]
    # when its image is removed by task id, and an edge image by its sha256 before sync-in
    removed = run(
        "labelling", "remove", "--task", str(task), "--reason", "wrong part", "--by", "ana"
    )
    assert [(r["sha256"], r["version"], r["by"]) for r in removed["removed"]] == [
        (sha, "v1", "ana")
    ]
    private = metal_tag_images(1, skip=10)[0]
    put_feedback_image(settings, private, [0.2])
    run("labelling", "remove", sha256_file(private), "--reason", "privacy request")
    # then the next round leaves it out though its task is still annotated
    v2 = run("labelling", "round", "--sync-in")
    assert (v2["version"], v2["created"], v2["sync_in"]["created"]) == ("v2", True, 0)
    manifest = json.loads((settings.workspace / "data" / "manifest.json").read_text())
    assert sha not in {i["sha256"] for i in manifest["images"]} and len(manifest["images"]) == 3
    assert run("labelling", "removed")["removed"][0]["sha256"] == sha
    # and when the removal is undone, the next round brings it back
    assert run("labelling", "restore", sha, "--reason", "it was the right part")["restored"] == [
        sha
    ]
    v3 = run("labelling", "round")
    assert (v3["version"], v3["created"]) == ("v3", True)
    manifest = json.loads((settings.workspace / "data" / "manifest.json").read_text())
    assert sha in {i["sha256"] for i in manifest["images"]}
    history = run("labelling", "removed")["history"]
    assert [h["action"] for h in history] == ["remove", "remove", "restore"]

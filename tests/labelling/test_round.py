"""Rounds: nothing new makes no version; invalid tasks are reported and left out (or, strict,
stop the round, naming the task); a version names the project and export it came from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from qcloop.dataset import current_manifest
from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.errors import AnnotationError
from qcloop_labelling.import_labels import import_yolo
from qcloop_labelling.round import run_round
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from tests.labelling.helpers import (
    annotate,
    metal_tag_images,
    put_feedback_image,
    rect,
    task_detail,
    yolo_subset,
)

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]
QUIET = {"progress": lambda _: None}


def test_round_with_nothing_new_creates_no_version(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    token = ls_settings.token.get_secret_value()
    # given only pending tasks: a round makes no version
    put_feedback_image(settings, metal_tag_images(1, skip=12)[0], [0.3])
    put_feedback_image(settings, metal_tag_images(1, skip=13)[0], [])
    pending = sync_in(settings, client, project_id, **QUIET).task_ids
    first = run_round(settings, client, project_id, **QUIET)
    assert (first.created, first.manifest, first.export.counts["pending"]) == (False, None, 2)
    # given four labelled images: the first round makes v1, the next one nothing
    import_yolo(settings, client, project_id, yolo_subset(tmp_path / "yolo", 4), **QUIET)
    v1 = run_round(settings, client, project_id, **QUIET)
    assert (v1.created, v1.manifest.version) == (True, "v1")
    again = run_round(settings, client, project_id, **QUIET)
    assert (again.created, again.manifest.version) == (False, "v1")
    # a skip adds nothing either
    annotate(ls_settings.url, token, pending[0], [], cancelled=True)
    skipped = run_round(settings, client, project_id, **QUIET)
    assert (skipped.created, skipped.export.counts["skipped"]) == (False, 1)
    # a newly labelled image makes v2; a later correction of it makes v3
    annotate(ls_settings.url, token, pending[1], [rect(10, 10, 20, 30)])
    v2 = run_round(settings, client, project_id, **QUIET)
    assert (v2.created, v2.manifest.version, len(v2.manifest.images)) == (True, "v2", 5)
    annotate(ls_settings.url, token, pending[1], [rect(12, 10, 20, 30), rect(50, 50, 5, 5)])
    v3 = run_round(settings, client, project_id, **QUIET)
    assert (v3.created, v3.manifest.version) == (True, "v3")
    assert sum(i.boxes for i in v3.manifest.images) == sum(i.boxes for i in v2.manifest.images) + 1


def _bad_and_good_tasks(
    settings: Settings, client: LabelStudioClient, project_id: int, ls: LabelStudioSettings
) -> tuple[int, int, int, int]:
    """Four tasks: one labelled well, one box outside the image, one flat, one unknown class."""
    token = ls.token.get_secret_value()
    for n in range(4):
        put_feedback_image(settings, metal_tag_images(1, skip=8 + n)[0], [0.2])
    ok, outside, flat, unknown = sync_in(settings, client, project_id, **QUIET).task_ids
    annotate(ls.url, token, ok, [rect(10, 10, 20, 20)])
    annotate(ls.url, token, outside, [rect(90, 10, 30, 20)])
    annotate(ls.url, token, flat, [rect(10, 10, 0, 5)])
    annotate(ls.url, token, unknown, [rect(10, 10, 5, 5, label="dent")])
    return ok, outside, flat, unknown


def test_strict_rounds_stop_at_bad_boxes_naming_the_task_and_create_no_version(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
) -> None:
    strict = settings.model_copy(
        update={"label_studio": settings.label_studio.model_copy(update={"strict": True})}
    )
    ok, outside, flat, unknown = _bad_and_good_tasks(strict, client, project_id, ls_settings)
    with pytest.raises(AnnotationError) as err:
        run_round(strict, client, project_id, **QUIET)
    message = str(err.value)
    assert f"task {outside} " in message and "outside the image" in message
    assert f"task {flat} " in message and "no area" in message
    assert f"task {unknown} " in message and "'dent'" in message
    assert f"task {ok} " not in message
    assert current_manifest(settings.workspace.resolve()) is None
    assert not (settings.workspace / "data.dvc").exists()


def test_a_round_takes_every_valid_task_and_reports_the_invalid_ones(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
) -> None:
    # given a git workspace and four annotated tasks, three of them with a bad box
    settings.workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=settings.workspace, check=True)
    ok, outside, flat, unknown = _bad_and_good_tasks(settings, client, project_id, ls_settings)
    # when a round runs (the default: not strict)
    result = run_round(settings, client, project_id, **QUIET)
    # then the valid task makes v1, and the invalid ones are reported, none written
    assert (result.created, result.manifest.version, len(result.manifest.images)) == (
        True,
        "v1",
        1,
    )
    assert result.export.counts["invalid"] == 3
    reported = {(p.task_id, p.box): p.reason for p in result.export.invalid}
    assert set(reported) == {(outside, 1), (flat, 1), (unknown, 1)}
    assert "outside the image" in reported[(outside, 1)] and "'dent'" in reported[(unknown, 1)]
    assert all(p.annotation_id for p in result.export.invalid)
    (image,) = result.manifest.images
    assert (
        image.sha256
        == task_detail(ls_settings.url, ls_settings.token.get_secret_value(), ok)["data"]["sha256"]
    )
    # and the version names the project, its URL and the export it came from
    source = result.manifest.source
    assert f"Label Studio project {project_id} '{ls_settings.project_title}'" in source
    assert f"{ls_settings.url}/projects/{project_id}/" in source
    assert f"export sha256 {result.export.export_sha256}" in source
    assert "qcloop-labelling-" not in source  # no temporary folder
    message = subprocess.run(
        ["git", "log", "-1", "--format=%s"], cwd=settings.workspace, capture_output=True, text=True
    ).stdout
    assert message.startswith("dataset v1: +1 images") and source in message
    # when the labeller fixes one of them, the next round takes it
    annotate(ls_settings.url, ls_settings.token.get_secret_value(), flat, [rect(10, 10, 4, 5)])
    fixed = run_round(settings, client, project_id, **QUIET)
    assert (fixed.created, fixed.manifest.version, len(fixed.manifest.images)) == (True, "v2", 2)
    assert {p.task_id for p in fixed.export.invalid} == {outside, unknown}


def test_cli_round_prints_the_invalid_tasks_in_its_json(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from pipelines import cli

    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__URL", ls_settings.url)
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__TOKEN", ls_settings.token.get_secret_value())
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__PROJECT_TITLE", ls_settings.project_title)
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(settings.store.path))
    monkeypatch.setenv("QCLOOP_WORKSPACE", str(settings.workspace))
    monkeypatch.setenv("QCLOOP_DVC__REMOTE", str(settings.dvc.remote))
    _, outside, flat, unknown = _bad_and_good_tasks(settings, client, project_id, ls_settings)
    capfd.readouterr()
    assert cli.main(["labelling", "round", "--sync-in"]) == 0
    out, err = capfd.readouterr()
    (line,) = out.splitlines()  # one JSON line on stdout, whatever DVC and git said
    result = json.loads(line)
    assert (result["version"], result["created"], result["sync_in"]["created"]) == ("v1", True, 0)
    assert {(i["task"], i["box"]) for i in result["invalid"]} == {
        (outside, 1),
        (flat, 1),
        (unknown, 1),
    }
    assert f"left out, fix it in Label Studio: task {outside} (annotation" in err
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__STRICT", "true")
    assert cli.main(["labelling", "round"]) == 1
    assert "invalid box(es) in task(s)" in capfd.readouterr().err

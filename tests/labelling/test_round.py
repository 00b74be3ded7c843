"""Rounds: nothing new makes no version; bad boxes stop the round, naming the task."""

from __future__ import annotations

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


def test_bad_boxes_name_the_task_and_create_no_version(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
) -> None:
    token = ls_settings.token.get_secret_value()
    for n in range(4):
        put_feedback_image(settings, metal_tag_images(1, skip=8 + n)[0], [0.2])
    ok, outside, flat, unknown = sync_in(settings, client, project_id, **QUIET).task_ids
    annotate(ls_settings.url, token, ok, [rect(10, 10, 20, 20)])
    annotate(ls_settings.url, token, outside, [rect(90, 10, 30, 20)])
    annotate(ls_settings.url, token, flat, [rect(10, 10, 0, 5)])
    annotate(ls_settings.url, token, unknown, [rect(10, 10, 5, 5, label="dent")])
    with pytest.raises(AnnotationError) as err:
        run_round(settings, client, project_id, **QUIET)
    message = str(err.value)
    assert f"task {outside} " in message and "outside the image" in message
    assert f"task {flat} " in message and "no area" in message
    assert f"task {unknown} " in message and "'dent'" in message
    assert f"task {ok} " not in message
    assert current_manifest(settings.workspace.resolve()) is None
    assert not (settings.workspace / "data.dvc").exists()

"""Raw store -> tasks: pre-annotations from the sidecars, least-confident first, never twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qcloop.raw import add_raw_images
from qcloop.settings import Settings
from qcloop.storage import open_store
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from tests.labelling.helpers import metal_tag_images, put_feedback_image, task_detail

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]
QUIET = {"progress": lambda _: None}


def test_sync_in_orders_by_confidence_carries_predictions_and_never_repeats(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
) -> None:
    # given five feedback images in the raw store, one without any detection
    scores = [[0.9, 0.4], [0.2], [], [0.5], [0.35, 0.3]]
    images = metal_tag_images(5)
    sidecars = [
        put_feedback_image(settings, img, s, minute=n)
        for n, (img, s) in enumerate(zip(images, scores, strict=True))
    ]
    # when they are synced in small batches
    report = sync_in(settings, client, project_id, batch_size=2, progress=lambda _: None)
    # then each became one task, least confident first (no detection = 0)
    assert (report.created, report.with_predictions) == (5, 4)
    tasks = [
        task_detail(ls_settings.url, ls_settings.token.get_secret_value(), i)
        for i in report.task_ids
    ]
    assert [t["data"]["confidence"] for t in tasks] == [0.0, 0.2, 0.35, 0.5, 0.9]
    by_sha = {s.sha256: s for s in sidecars}
    for task in tasks:
        sidecar = by_sha[task["data"]["sha256"]]
        assert task["data"]["raw_key"] == sidecar.key
        assert task["data"]["image"].startswith("data:image/jpeg;base64,")
        if not sidecar.predictions:
            assert task["predictions"] == []
            continue
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "qcloop-detector:3"
        assert prediction["score"] == pytest.approx(max(d.score for d in sidecar.predictions))
        boxes = prediction["result"]
        assert len(boxes) == len(sidecar.predictions)
        first, det = boxes[0]["value"], sidecar.predictions[0]
        assert first["x"] == pytest.approx(100 * det.box[0] / sidecar.width)
        assert first["height"] == pytest.approx(100 * (det.box[3] - det.box[1]) / sidecar.height)
        assert boxes[0]["score"] == pytest.approx(det.score)
    # and a second sync creates nothing; a new image alone creates one task
    again = sync_in(settings, client, project_id, progress=lambda _: None)
    assert (again.created, again.already_in_project) == (0, 5)
    put_feedback_image(settings, metal_tag_images(1, skip=5)[0], [0.1], minute=9)
    assert sync_in(settings, client, project_id, progress=lambda _: None).created == 1
    assert sum(1 for _ in client.task_metas(project_id)) == 6


def test_images_added_by_hand_become_tasks_like_edge_feedback(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    # given two new captures added with `qcloop raw add` and one edge feedback image
    folder = tmp_path / "captures"
    folder.mkdir()
    for image in metal_tag_images(2, skip=6):
        shutil.copy(image, folder / image.name)
    added = add_raw_images(open_store(settings.store), [folder], source="line-2", **QUIET)
    put_feedback_image(settings, metal_tag_images(1, skip=8)[0], [0.3])
    # when they are synced in
    report = sync_in(settings, client, project_id, **QUIET)
    # then each is a task; the new captures, which no model has seen, come first
    assert report.created == 3
    tasks = [
        task_detail(ls_settings.url, ls_settings.token.get_secret_value(), i)
        for i in report.task_ids
    ]
    assert {t["data"]["raw_key"] for t in tasks[:2]} == set(added.keys)
    assert [t["predictions"] for t in tasks[:2]] == [[], []]
    assert tasks[0]["data"]["image"].startswith("data:image/jpeg;base64,")
    assert len(tasks[2]["predictions"]) == 1

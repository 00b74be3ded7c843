"""The stand-in annotator labels tasks through the real API, and a round exports its labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcloop.contracts import DatasetManifest
from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.round import run_round
from qcloop_labelling.standin import StandInAnnotator
from qcloop_labelling.sync_in import sync_in
from tests.conftest import METAL_TAGS
from tests.labelling.helpers import (
    metal_tag_images,
    put_feedback_image,
    read_labels,
    yolo_subset,
)

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def test_labels_known_images_by_hash_and_the_round_exports_exactly_them(
    settings: Settings, client: LabelStudioClient, project_id: int, tmp_path: Path
) -> None:
    # given four feedback images of the first capture (three of them defect-free) and one
    # image the annotator has never seen
    truth = yolo_subset(tmp_path / "truth", 4)
    for n, image in enumerate(metal_tag_images(4)):
        put_feedback_image(settings, image, [0.3], minute=n)
    stranger = put_feedback_image(settings, metal_tag_images(1, skip=8)[0], [0.1], minute=9)
    synced = sync_in(settings, client, project_id, progress=lambda _: None)
    assert synced.created == 5
    # when the stand-in annotator labels the new tasks
    annotator = StandInAnnotator.from_yolo_folders("stand-in", [truth])
    report = annotator.label(client, project_id, synced.task_ids)
    # then it annotated the four it knows and left the stranger pending
    assert (report.labelled, report.negative, report.unknown) == (1, 3, 1)
    assert len(report.annotation_ids) == 4
    # and the round turns exactly those labels into v1, boxes as in the folder
    result = run_round(settings, client, project_id, progress=lambda _: None)
    assert result.created and result.manifest is not None
    assert result.export.counts["pending"] == 1
    manifest = DatasetManifest.load(settings.workspace / "data" / "manifest.json")
    assert stranger.sha256 not in {i.sha256 for i in manifest.images}
    assert len(manifest.images) == 4
    for entry in manifest.images:
        exported = read_labels(settings.workspace / "data" / entry.label_file)
        original = read_labels(METAL_TAGS / "labels" / f"{Path(entry.file).stem}.txt")
        assert len(exported) == len(original)
        for got, want in zip(exported, original, strict=True):
            assert got == pytest.approx(want, abs=1e-5)

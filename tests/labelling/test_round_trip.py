"""The real metal-tags labels through a real Label Studio and back, box for box."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.import_labels import import_yolo
from qcloop_labelling.round import run_round
from qcloop_labelling.sync_out import REPORT_FILE, sync_out
from tests.labelling.helpers import METAL_TAGS, read_labels

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def test_metal_tags_round_trip_is_box_for_box_equal(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given the labelled metal-tags sample imported as annotated tasks, negatives among them
    originals = sorted((METAL_TAGS / "labels").glob("*.txt"))
    negatives = sum(1 for p in originals if not read_labels(p))
    assert negatives and len(originals) > negatives
    imported = import_yolo(settings, client, project_id, METAL_TAGS, progress=lambda _: None)
    assert (imported.created, imported.negatives) == (len(originals), negatives)
    assert (
        import_yolo(settings, client, project_id, METAL_TAGS, progress=lambda _: None).created == 0
    )
    # when they are exported and converted
    out = tmp_path / "export"
    caplog.set_level(logging.INFO)
    report = sync_out(settings, client, project_id, out)
    # then every image comes back with the same boxes (within rounding), negatives kept
    assert report.counts == {
        "labelled": len(originals) - negatives,
        "negative": negatives,
        "skipped": 0,
        "pending": 0,
        "invalid": 0,
    }
    assert f"negative {negatives}" in caplog.text  # the counts are logged
    for original in originals:
        back = read_labels(out / "labels" / original.name)
        want = read_labels(original)
        assert len(back) == len(want), original.name
        for got, exp in zip(back, want, strict=True):
            assert got == pytest.approx(exp, abs=2e-6), original.name
        image = METAL_TAGS / "images" / f"{original.stem}.jpg"
        assert (out / "images" / image.name).read_bytes() == image.read_bytes()
    assert (out / "classes.txt").read_text() == "scratch\n"
    assert "updated last wins" in (out / REPORT_FILE).read_text()
    # and a round makes it dataset version v1, with the same counts
    result = run_round(settings, client, project_id, progress=lambda _: None)
    assert result.created and result.manifest is not None
    assert result.manifest.version == "v1"
    assert len(result.manifest.images) == len(originals)
    assert sum(c.negatives for c in result.manifest.counts.values()) == negatives

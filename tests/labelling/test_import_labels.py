"""Existing labels in: a Label Studio JSON export from elsewhere, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcloop.dataset import current_manifest
from qcloop.settings import Settings
from qcloop_labelling import cli
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.import_labels import import_coco, import_label_studio_json
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_out import sync_out
from tests.labelling.helpers import METAL_TAGS, metal_tag_images, rect, yolo_subset

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def _foreign_task(n: int, image: Path, annotations: list[dict]) -> dict:
    """A task as another Label Studio exports it: uploaded file, several annotations."""
    return {
        "id": 100 + n,
        "data": {"image": f"/data/upload/7/0a1b2c3d-{image.name}"},
        "annotations": annotations,
    }


def test_label_studio_json_export_imports_with_its_counted_annotation(
    settings: Settings, client: LabelStudioClient, project_id: int, tmp_path: Path
) -> None:
    # given an export from another server: older + newer annotation, a skip, a negative, nothing
    a, b, c, d = metal_tag_images(4, skip=4)
    old = {"id": 1, "updated_at": "2026-01-01T00:00:00Z", "result": [rect(1, 1, 5, 5)]}
    new = {"id": 2, "updated_at": "2026-02-01T00:00:00Z", "result": [rect(10, 20, 30, 40)]}
    skip = {"id": 3, "was_cancelled": True, "result": []}
    negative = {"id": 4, "updated_at": "2026-01-01T00:00:00Z", "result": []}
    export = tmp_path / "export.json"
    tasks = [
        _foreign_task(0, a, [old, new]),
        _foreign_task(1, b, [skip]),
        _foreign_task(2, c, [negative]),
        _foreign_task(3, d, []),
    ]
    export.write_text(json.dumps(tasks))
    # when it is imported
    report = import_label_studio_json(
        settings, client, project_id, export, METAL_TAGS / "images", progress=lambda _: None
    )
    # then the newer annotation counts, the negative stays one, the others are pending
    assert (report.created, report.boxes, report.negatives) == (4, 1, 1)
    out = sync_out(settings, client, project_id, tmp_path / "out", progress=lambda _: None)
    assert out.counts == {"labelled": 1, "negative": 1, "skipped": 0, "pending": 2, "invalid": 0}
    line = (tmp_path / "out" / "labels" / f"{a.stem}.txt").read_text().split()
    assert [float(v) for v in line[1:]] == pytest.approx([0.25, 0.4, 0.3, 0.4])


def test_cli_import_labels_sync_out_and_round(
    settings: Settings,
    ls_settings: LabelStudioSettings,
    project_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    def result() -> dict:
        """The command's stdout: one JSON line and nothing else (DVC and git included)."""
        (line,) = capfd.readouterr().out.splitlines()
        return dict(json.loads(line))

    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__URL", ls_settings.url)
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__TOKEN", ls_settings.token.get_secret_value())
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__PROJECT_TITLE", ls_settings.project_title)
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(settings.store.path))
    monkeypatch.setenv("QCLOOP_WORKSPACE", str(settings.workspace))
    monkeypatch.setenv("QCLOOP_DVC__REMOTE", str(tmp_path / "remote"))
    folder = yolo_subset(tmp_path / "yolo", 3, skip=12)
    capfd.readouterr()
    assert cli.main(["labelling", "bootstrap"]) == 0
    assert result()["action"] == "unchanged"
    assert cli.main(["labelling", "import-labels", str(folder)]) == 0
    assert result()["created"] == 3
    assert cli.main(["labelling", "sync-in"]) == 0
    assert result()["created"] == 0  # already tasks
    assert cli.main(["labelling", "sync-out", "--out", str(tmp_path / "out")]) == 0
    out = result()
    assert (out["counts"]["labelled"], out["invalid"], len(out["export_sha256"])) == (3, [], 64)
    assert cli.main(["labelling", "round"]) == 0
    first = result()
    assert (first["version"], first["created"]) == ("v1", True)
    assert current_manifest(settings.workspace.resolve()).version == "v1"
    assert cli.main(["labelling", "round"]) == 0
    assert result()["created"] is False


def test_coco_file_imports_as_annotated_tasks(
    settings: Settings, client: LabelStudioClient, project_id: int, tmp_path: Path
) -> None:
    # given a COCO file: one image with two boxes, one listed without boxes (a negative)
    a, b = metal_tag_images(2, skip=8)
    coco = {
        "images": [
            {"id": 1, "file_name": f"some/where/{a.name}", "width": 450, "height": 300},
            {"id": 2, "file_name": b.name, "width": 450, "height": 300},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 5, "bbox": [45, 30, 90, 60]},
            {"id": 11, "image_id": 1, "category_id": 5, "bbox": [0, 0, 450, 300]},
        ],
        "categories": [{"id": 5, "name": "scratch"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    # when it is imported and exported
    report = import_coco(
        settings,
        client,
        project_id,
        tmp_path / "coco.json",
        METAL_TAGS / "images",
        progress=lambda _: None,
    )
    out = sync_out(settings, client, project_id, tmp_path / "out", progress=lambda _: None)
    # then the boxes are the same in YOLO terms and the negative is kept
    assert (report.created, report.boxes, report.negatives) == (2, 2, 1)
    assert out.counts == {"labelled": 1, "negative": 1, "skipped": 0, "pending": 0, "invalid": 0}
    lines = sorted((tmp_path / "out" / "labels" / f"{a.stem}.txt").read_text().splitlines())
    got = [[float(v) for v in line.split()] for line in lines]
    assert got[0] == pytest.approx([0, 0.2, 0.2, 0.2, 0.2])
    assert got[1] == pytest.approx([0, 0.5, 0.5, 1.0, 1.0])
    assert (tmp_path / "out" / "labels" / f"{b.stem}.txt").read_text() == ""

"""The labelling pipeline on the kfp.local runner: sync in, round, and training on a new version."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.registry import get_model_record
from pipelines.labelling import compile_pipeline, run_local
from qcloop.errors import RegistryError
from qcloop.settings import MlflowSettings, Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.import_labels import import_yolo
from qcloop_labelling.settings import LabelStudioSettings
from tests.labelling.helpers import yolo_subset

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def test_compiles_with_training_nested(tmp_path: Path) -> None:
    text = compile_pipeline(tmp_path / "labelling.yaml").read_text()
    for step in ("sync-in-step", "round-step", "qcloop-training", "QCLOOP_LABEL_STUDIO__TOKEN"):
        assert step in text


def test_new_labels_make_a_version_that_is_trained_once(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    # given 12 labelled images (three captures) in Label Studio
    import_yolo(settings, client, project_id, yolo_subset(tmp_path / "yolo", 12), progress=print)
    full = settings.model_copy(
        update={
            "label_studio": ls_settings,
            "mlflow": MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/m.db", model_name="det"),
        }
    )
    run = {"pipeline_root": tmp_path / "kfp", "settings": full, "epochs": 1, "imgsz": 160}
    # when the labelling pipeline runs: a new version, trained and registered
    first = run_local(**run, min_map50_95=0.0)
    assert (first["created"], first["version"]) == (True, "v1")
    assert first["training"]["registered"] is True
    record = get_model_record(full.mlflow.tracking_uri, "det", "1")
    assert record.dataset_version == "v1"
    # and again with nothing new: no version, no training
    again = run_local(**run, min_map50_95=0.0)
    assert again == {"created": False, "version": "v1", "training": None}
    with pytest.raises(RegistryError, match="not found"):
        get_model_record(full.mlflow.tracking_uri, "det", "2")

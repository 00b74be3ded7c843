"""Two turns of the loop on real photos, through Label Studio: the lineage holds end to end.

Round 1: v1 -> model 1 -> the agent sends frames it is unsure of back. Round 2: those
images become Label Studio tasks, the stand-in annotator labels them through the API,
the labelling pipeline makes v2 (parent v1) and trains model 2, the gate compares it with
model 1 on the same images, model 2 is released and the same running agent swaps to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.registry import get_model_record
from pipelines.demo import DemoOptions, run_demo
from qcloop.contracts import DatasetManifest
from qcloop.storage import LocalStore, list_raw_images, sha256_file

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.label_studio]


def test_two_rounds_feedback_of_model_1_becomes_v2_and_model_2_serves(
    tmp_path: Path, metal_tags: Path
) -> None:
    # given the real sample: three captures for v1, the fourth shown to the camera
    options = DemoOptions(
        data=metal_tags,
        home=tmp_path / "home",
        epochs=1,
        imgsz=160,
        frames=4,
        rounds=2,
        summary=tmp_path / "summary.json",
    )
    # when the loop turns twice
    summary = run_demo(options)
    assert json.loads(options.summary.read_text()) == summary
    first, second = summary["rounds"]
    # then round 2 made v2 on top of v1 from the labelled feedback of model 1
    assert (first["dataset_version"], first["parent_version"]) == ("v1", None)
    assert (second["dataset_version"], second["parent_version"]) == ("v2", "v1")
    assert first["model_version"] == first["serving_model_version"] == "1"
    assert first["feedback_images"] > 0
    assert first["feedback_by_model"] == {"1": first["feedback_images"]}
    assert second["images_labelled"] == first["feedback_images"]
    assert second["labelled_by"] == "stand-in-annotator"
    # and model 2 learnt from v2, passed the gate against model 1, and the agent serves it
    assert second["model_version"] == second["serving_model_version"] == "2"
    assert "production v1 on the same images" in second["gate_reason"]
    home = options.home.resolve()
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    record = get_model_record(tracking, "qcloop-detector", "2")
    assert record.dataset_version == "v2"
    run = MlflowClient(tracking_uri=tracking).get_run(record.run_id)  # runs link by version
    assert run.data.tags["parent_dataset_version"] == "v1"
    # lineage by content: every image v2 added is a frame model 1 sent back
    store = LocalStore(home / "store")
    sidecars = {s.sha256: s for s in list_raw_images(store)}
    v1 = {sha256_file(p) for p in (home / "data" / "first" / "images").iterdir()}
    v2 = DatasetManifest.load(home / "workspace" / "data" / "manifest.json")
    added = [i for i in v2.images if i.sha256 not in v1]
    assert len(added) == second["new_images_from_feedback"] == first["feedback_images"]
    for image in added:
        sidecar = sidecars[image.sha256]
        assert sidecar.reason == "low_confidence" and sidecar.device_id == "demo-cam-1"
        assert sidecar.model is not None and sidecar.model.version == "1"
    # and v1's images kept their splits in v2 (by capture)
    v2_split = {i.sha256: i.split for i in v2.images}
    v1_manifest_splits = {i.group: i.split for i in v2.images if i.sha256 in v1}
    for image in v2.images:
        assert v2_split[image.sha256] == v1_manifest_splits.get(image.group, image.split)
    # and after the swap the agent's feedback names model 2
    assert second["feedback_images"] > 0
    assert second["feedback_by_model"] == {"2": second["feedback_images"]}
    after = [s for s in sidecars.values() if s.model and s.model.version == "2"]
    assert len(after) == second["feedback_images"]
    assert summary["serving_model_version"] == "2" and summary["model_swaps"] == 2
    # and the loop report has a row a round
    report = options.summary.with_name("demo-report.md").read_text()
    assert "| 2 | v2 (v1) |" in report

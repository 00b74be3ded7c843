"""The whole loop on real metal-tags images: dataset -> pipeline -> MLflow -> MQTT -> agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.demo import DemoOptions, run_demo
from qcloop.contracts import DatasetManifest, RawImageSidecar
from qcloop.storage import LocalStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_loop_on_real_metal_tags(tmp_path: Path, metal_tags: Path) -> None:
    # given the real data and a 1-epoch training budget
    options = DemoOptions(
        data=metal_tags,
        home=tmp_path / "home",
        epochs=1,
        imgsz=320,
        frames=8,
        summary=tmp_path / "summary.json",
    )
    # when the loop runs end to end
    summary = run_demo(options)
    # then every stage left its mark
    assert json.loads(options.summary.read_text()) == summary
    manifest = DatasetManifest.load(options.home / "workspace" / "data" / "manifest.json")
    assert summary["dataset_version"] == manifest.version == "v1"
    assert len(manifest.images) == 16
    assert summary["model_version"] == summary["serving_model_version"] == "1"
    assert summary["frames_inferred"] == 8
    assert 0 < summary["metrics"]["images"] == manifest.counts["test"].images
    store = LocalStore(options.home / "store")
    feedback = [
        RawImageSidecar.from_json(store.get_bytes(k))
        for k in store.list("raw/")
        if k.endswith(".json")
    ]
    sent_back = [s for s in feedback if s.reason == "low_confidence"]
    assert len(sent_back) == summary["feedback_images"]
    for sidecar in sent_back:  # each feedback image is there, with the model that judged it
        assert store.exists(sidecar.key)
        assert sidecar.model is not None and sidecar.model.version == "1"
        assert sidecar.device_id == "demo-cam-1"

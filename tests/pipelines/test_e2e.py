"""The whole loop on real metal-tags images: dataset -> pipeline -> MLflow -> MQTT -> agent.

Here Label Studio is missing: round 1 runs in full, then the demo stops with an error that
says how to install it, and its summary says so too (never a pretended round 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.demo import DemoOptions, run_demo
from qcloop.contracts import DatasetManifest, RawImageSidecar
from qcloop.errors import PipelineError
from qcloop.storage import LocalStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_loop_on_real_metal_tags_stops_after_round_1_without_label_studio(
    tmp_path: Path, metal_tags: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the real data, a 1-epoch training budget, and no Label Studio
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO_BIN", str(tmp_path / "no-label-studio"))
    options = DemoOptions(
        data=metal_tags,
        home=tmp_path / "home",
        epochs=1,
        imgsz=320,
        frames=8,
        rounds=2,
        summary=tmp_path / "summary.json",
    )
    # when the loop is asked to turn twice
    with pytest.raises(
        PipelineError, match=r"stopped after round 1: Label Studio is not installed"
    ):
        run_demo(options)
    # then round 1 left its mark at every stage, and the summary says why it stopped
    summary = json.loads(options.summary.read_text())
    assert "install-label-studio.sh" in summary["stopped"]
    assert [r["round"] for r in summary["rounds"]] == [1]
    manifest = DatasetManifest.load(options.home / "workspace" / "data" / "manifest.json")
    assert summary["dataset_version"] == manifest.version == "v1"
    assert len(manifest.images) == 12  # three captures; the fourth is what the camera sees
    assert summary["model_version"] == summary["serving_model_version"] == "1"
    assert summary["frames_inferred"] == 2  # half the fourth capture a round
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

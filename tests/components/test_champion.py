"""Champion/challenger on a real MLflow: the production model scored on the same test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.audit import approve
from components.champion import compare_with_production, evaluate_champion
from components.evaluate import evaluate_onnx
from components.registry import register_model
from qcloop.contracts import EvalMetrics
from qcloop.errors import PipelineError

pytestmark = pytest.mark.integration


def _register(uri: str, onnx: Path, classes: list[str]) -> str:
    record = register_model(
        tracking_uri=uri,
        experiment="e",
        model_name="det",
        onnx_path=onnx,
        metrics=EvalMetrics(map50=0.5, map50_95=0.3, precision=0.5, recall=0.5, images=4),
        params={},
        dataset_version="v1",
        code_version="t",
        class_names=classes,
        input_size=160,
    )
    return record.version


def test_no_production_model_means_no_champion(tmp_path: Path, tiny_dataset: Path) -> None:
    assert (
        evaluate_champion(f"sqlite:///{tmp_path}/m.db", "det", "production", tiny_dataset) is None
    )


def test_production_model_is_scored_on_the_same_split(
    tmp_path: Path, tiny_dataset: Path, exported_onnx: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    version = _register(uri, exported_onnx, ["scratch"])
    approve(tracking_uri=uri, model_name="det", version=version, approved_by="t")
    found = evaluate_champion(uri, "det", "production", tiny_dataset)
    assert found is not None
    record, metrics = found
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert record.version == version
    assert metrics.images == manifest["counts"]["test"]["images"]


def test_other_class_list_is_refused(
    tmp_path: Path, tiny_dataset: Path, exported_onnx: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    version = _register(uri, exported_onnx, ["dent"])
    approve(tracking_uri=uri, model_name="det", version=version, approved_by="t")
    with pytest.raises(PipelineError, match=r"differ from production model det v1's \['dent'\]"):
        evaluate_champion(uri, "det", "production", tiny_dataset)


def test_production_is_paired_with_the_challenger_on_the_same_images(
    tmp_path: Path, tiny_dataset: Path, exported_onnx: Path
) -> None:
    # given production and a challenger that is the same model, scored on the same split
    uri = f"sqlite:///{tmp_path}/m.db"
    version = _register(uri, exported_onnx, ["scratch"])
    approve(tracking_uri=uri, model_name="det", version=version, approved_by="t")
    stats = tmp_path / "challenger-stats.json"
    challenger = evaluate_onnx(exported_onnx, tiny_dataset, imgsz=160, image_stats=stats)
    # when compared
    found = compare_with_production(uri, "det", "production", tiny_dataset, stats)
    # then the two differ by nothing, on production's own dataset version
    assert found is not None
    production, paired = found
    assert production.map50_95 == challenger.map50_95
    assert paired.difference == 0.0 and paired.production_version == version
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert paired.new_data is (manifest["version"] != "v1")
    assert paired.captures == challenger.captures
    # and images the challenger was not scored on are refused
    rows = json.loads(stats.read_text())
    stats.write_text(json.dumps(rows[1:]))
    with pytest.raises(PipelineError, match="evaluate both on the same"):
        compare_with_production(uri, "det", "production", tiny_dataset, stats)

"""ONNX export vs PyTorch weights: same boxes on the same real images, or the export is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.parity import check_parity, count_matches
from qcloop.errors import PipelineError
from tests.components.conftest import IMGSZ


def test_count_matches_needs_class_and_iou() -> None:
    ref = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))
    same = (np.array([[0, 0, 10, 10.5], [20, 20, 30, 30]], float), np.array([0, 1]))
    assert count_matches(ref, same, 0.9) == 1  # second box: other class
    assert count_matches(ref, (np.zeros((0, 4)), np.zeros(0)), 0.9) == 0
    shifted = (np.array([[3, 3, 13, 13]], float), np.array([0]))
    assert count_matches(ref, shifted, 0.9) == 0


def _test_images(dataset: Path) -> list[Path]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return [dataset / i["file"] for i in manifest["images"] if i["split"] == "test"]


@pytest.mark.integration
def test_export_matches_its_weights(
    trained_weights: Path, exported_onnx: Path, tiny_dataset: Path
) -> None:
    # low conf so that the 1-epoch model has boxes to compare (not so low that the
    # max_det cut-off among near-equal scores decides which boxes are kept)
    parity = check_parity(
        trained_weights, exported_onnx, _test_images(tiny_dataset), imgsz=IMGSZ, conf=0.01
    )
    assert parity.boxes > 0
    assert parity.share >= 0.95


@pytest.mark.integration
def test_another_model_is_refused(
    trained_weights: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    from components.export import export_onnx

    fresh = tmp_path / "fresh.pt"
    YOLO("yolov8n.yaml").save(str(fresh))
    other = export_onnx(fresh, tmp_path / "other.onnx", imgsz=IMGSZ)
    with pytest.raises(PipelineError, match="export is broken"):
        check_parity(trained_weights, other, _test_images(tiny_dataset), imgsz=IMGSZ, conf=0.01)

"""ONNX export vs PyTorch weights: same raw boxes on the same real images, or it is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.parity import check_parity, compare_raw, count_matches
from qcloop.errors import PipelineError
from tests.components.conftest import IMGSZ


def test_count_matches_needs_class_and_iou() -> None:
    ref = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))
    same = (np.array([[0, 0, 10, 10.5], [20, 20, 30, 30]], float), np.array([0, 1]))
    assert count_matches(ref, same, 0.9) == 1  # second box: other class
    assert count_matches(ref, (np.zeros((0, 4)), np.zeros(0)), 0.9) == 0
    shifted = (np.array([[3, 3, 13, 13]], float), np.array([0]))
    assert count_matches(ref, shifted, 0.9) == 0


def test_compare_raw_looks_at_candidates_of_either_model() -> None:
    # 1 class: rows x, y, w, h, score; 4 anchors
    ref = np.array(
        [[[10, 20, 30, 40], [10, 20, 30, 40], [5, 5, 5, 5], [5, 5, 5, 5], [0.9, 0.1, 0.3, 0.0]]]
    )
    same = ref + np.array([0.5, 0, 0, 0, 0.01])[None, :, None]  # half a pixel, 0.01 score
    assert compare_raw(ref, same, conf=0.2, box_tol=1.0, score_tol=0.02)[:2] == (2, 2)
    other = ref.copy()
    other[0, 0, 2] += 3.0  # anchor 2 (a candidate) moved 3 px
    other[0, 4, 1] = 0.5  # anchor 1 is a candidate only in the other model, score far off
    n, ok, worst_box, worst_score = compare_raw(ref, other, conf=0.2, box_tol=1.0, score_tol=0.02)
    assert (n, ok) == (3, 1)
    assert worst_box == pytest.approx(3.0) and worst_score == pytest.approx(0.4)
    assert compare_raw(ref, ref, conf=0.95, box_tol=1.0, score_tol=0.02) == (0, 0, 0.0, 0.0)
    with pytest.raises(PipelineError, match="differ in shape"):
        compare_raw(ref, ref[:, :, :3], conf=0.2, box_tol=1.0, score_tol=0.02)


def _test_images(dataset: Path) -> list[Path]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return [dataset / i["file"] for i in manifest["images"] if i["split"] == "test"]


@pytest.mark.integration
def test_export_matches_its_weights(
    trained_weights: Path, exported_onnx: Path, tiny_dataset: Path
) -> None:
    # low conf so that the 1-epoch model has candidate boxes to compare
    parity = check_parity(
        trained_weights, exported_onnx, _test_images(tiny_dataset), imgsz=IMGSZ, conf=0.01
    )
    assert parity.boxes > 0
    assert parity.share >= 0.95
    assert parity.worst_box_px < 0.1 and parity.worst_score < 0.001, parity


@pytest.mark.integration
def test_another_model_is_refused(
    trained_weights: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    from components.export import export_onnx

    images = _test_images(tiny_dataset)
    # a model of another shape (80 classes)
    fresh = tmp_path / "fresh.pt"
    YOLO("yolov8n.yaml").save(str(fresh))
    other = export_onnx(fresh, tmp_path / "other.onnx", imgsz=IMGSZ)
    with pytest.raises(PipelineError, match=r"output shape .* differs.*export is broken"):
        check_parity(trained_weights, other, images, imgsz=IMGSZ, conf=0.01)
    # the same architecture with a damaged head: its candidate boxes move
    import torch

    ckpt = torch.load(trained_weights, map_location="cpu", weights_only=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in ckpt["model"].model[-1].parameters():  # box and class branches
            param.add_(torch.randn_like(param) * 0.05)
    damaged = tmp_path / "damaged.pt"
    torch.save(ckpt, damaged)
    broken = export_onnx(damaged, tmp_path / "damaged.onnx", imgsz=IMGSZ)
    with pytest.raises(PipelineError, match=r"candidate boxes .* agree.*export is broken"):
        check_parity(trained_weights, broken, images, imgsz=IMGSZ, conf=0.01)

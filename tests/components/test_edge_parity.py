"""The edge agent's detector (numpy + onnxruntime) against ultralytics on the same export.

The promise: the same detections as ultralytics for the same model (a box matched by one of
the same class with IoU >= 0.9, for >= 95% of the boxes), for a static and a dynamic
export; for the dynamic one in both of its input plans (square, and the smallest
canvas of stride multiples, which ultralytics calls ``rect``). Here, beside the
training room, whose fixtures train the model once for all these tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from components.parity import PARITY_MIN, count_matches
from edge_agent.inference import Detector, prepare_input
from tests.components.conftest import IMGSZ

CONF = 0.01  # low: the one-epoch model has boxes to compare
Boxes = tuple[np.ndarray, np.ndarray]


def _images(metal_tags: Path) -> list[Path]:
    return sorted((metal_tags / "images").glob("*.jpg"))[:12]


def _ultralytics(model: Path, images: list[Path], conf: float, rect: bool) -> list[Boxes]:
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    out = []
    for image in images:
        boxes = yolo.predict(
            str(image), imgsz=IMGSZ, conf=conf, rect=rect, device="cpu", verbose=False
        )[0].boxes
        out.append((boxes.xyxy.cpu().numpy(), boxes.cls.cpu().numpy()))
    return out


def _agent(detector: Detector, images: list[Path], conf: float) -> list[Boxes]:
    out = []
    for image in images:
        found = detector.detect(image, confidence=conf)
        boxes = np.array([d.box for d in found], float).reshape(-1, 4)
        classes = np.array([detector.names.index(d.label) for d in found], float)
        out.append((boxes, classes))
    return out


def _assert_same(ref: list[Boxes], other: list[Boxes], what: str) -> None:
    boxes = sum(len(r[0]) for r in ref)
    matched = sum(count_matches(r, o, 0.9) for r, o in zip(ref, other, strict=True))
    assert boxes > 0, f"no {what} boxes to compare"
    assert matched / boxes >= PARITY_MIN, f"{matched} of {boxes} {what} boxes matched"


def _check_both_ways(detector: Detector, model: Path, images: list[Path], rect: bool) -> None:
    # the side searched gets 20% slack on conf: a box at 0.0101 on one side, 0.0099 on
    # the other is the same box
    slack = CONF * 0.8
    ours, ours_slack = _agent(detector, images, CONF), _agent(detector, images, slack)
    theirs, theirs_slack = (_ultralytics(model, images, c, rect) for c in (CONF, slack))
    _assert_same(theirs, ours_slack, "ultralytics")
    _assert_same(ours, theirs_slack, "agent")


@pytest.fixture
def models(exported_onnx: Path, exported_dynamic_onnx: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of both exports: ultralytics may write beside a model file."""
    return {
        name: Path(shutil.copyfile(src, tmp_path / f"{name}.onnx"))
        for name, src in (("static", exported_onnx), ("dynamic", exported_dynamic_onnx))
    }


@pytest.mark.integration
def test_static_export_same_boxes_as_ultralytics(models: dict[str, Path], metal_tags: Path) -> None:
    detector = Detector(models["static"])
    assert detector.plan.stride == 0 and not detector.dynamic
    _check_both_ways(detector, models["static"], _images(metal_tags), rect=False)


@pytest.mark.integration
def test_dynamic_export_rect_same_boxes_as_ultralytics_rect(
    models: dict[str, Path], metal_tags: Path
) -> None:
    # given the dynamic export: each 450x300 frame runs on a 160x128 canvas, not 160x160
    detector = Detector(models["dynamic"])
    assert detector.dynamic and detector.plan.stride == 32
    frame = _images(metal_tags)[0]
    assert prepare_input(frame, detector.plan).tensor.shape == (1, 3, 128, IMGSZ)
    # then the boxes are ultralytics' with rect=True
    _check_both_ways(detector, models["dynamic"], _images(metal_tags), rect=True)


@pytest.mark.integration
def test_dynamic_export_square_same_boxes_as_ultralytics(
    models: dict[str, Path], metal_tags: Path
) -> None:
    detector = Detector(models["dynamic"], rect=False)
    assert detector.plan.stride == 0
    _check_both_ways(detector, models["dynamic"], _images(metal_tags), rect=False)

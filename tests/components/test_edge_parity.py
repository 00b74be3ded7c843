"""The edge agent's detector (numpy + onnxruntime) against ultralytics on the same export.

The promise: with the thresholds a release carries (NMS IoU and letterbox: those the
evaluation scored the model with), the agent's boxes are ultralytics' ``predict`` boxes
on the same model: >= 99% of the boxes of either side matched by one of the same class
with IoU >= 0.9, on real photos, for a static and a dynamic export; for the dynamic one
in both letterboxes (the smallest canvas of stride multiples, ``rect``, and square).
The agent letterboxes with OpenCV's resize arithmetic (``edge_agent.resize``) and
decodes whole frames, so both sides feed the model the same pixels. Here, beside the
training room, whose fixtures train the model once for all these tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from components.parity import count_matches
from components.release import scoring_thresholds
from edge_agent.inference import Detector, prepare_input
from qcloop.contracts import Thresholds
from tests.components.conftest import IMGSZ

CONF = 0.01  # low: the one-epoch model has boxes to compare
SAME_BOXES_MIN = 0.99
Boxes = tuple[np.ndarray, np.ndarray]


def _images(metal_tags: Path) -> list[Path]:
    return sorted((metal_tags / "images").glob("*.jpg"))


def _ultralytics(model: Path, images: list[Path], thresholds: Thresholds) -> list[Boxes]:
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    out = []
    for image in images:
        boxes = yolo.predict(
            str(image),
            imgsz=IMGSZ,
            conf=thresholds.confidence,
            iou=thresholds.iou,
            rect=thresholds.letterbox == "rect",
            device="cpu",
            verbose=False,
        )[0].boxes
        out.append((boxes.xyxy.cpu().numpy(), boxes.cls.cpu().numpy()))
    return out


def _agent(model: Path, images: list[Path], thresholds: Thresholds) -> list[Boxes]:
    detector = Detector(
        model,
        confidence=thresholds.confidence,
        iou=thresholds.iou,
        rect=thresholds.letterbox == "rect",
    )
    out = []
    for image in images:
        found = detector.detect(image)
        boxes = np.array([d.box for d in found], float).reshape(-1, 4)
        classes = np.array([detector.names.index(d.label) for d in found], float)
        out.append((boxes, classes))
    return out


def _share(ref: list[Boxes], other: list[Boxes]) -> tuple[int, int]:
    matched = sum(count_matches(r, o, 0.9) for r, o in zip(ref, other, strict=True))
    return matched, sum(len(r[0]) for r in ref)


def _assert_same_boxes(model: Path, images: list[Path], thresholds: Thresholds) -> None:
    theirs = _ultralytics(model, images, thresholds)
    ours = _agent(model, images, thresholds)
    for what, (matched, boxes) in (
        ("ultralytics", _share(theirs, ours)),
        ("agent", _share(ours, theirs)),
    ):
        share = matched / boxes if boxes else 0.0
        print(f"{model.stem} {thresholds}: {matched}/{boxes} {what} boxes matched ({share:.1%})")
        assert boxes > 0, f"no {what} boxes to compare"
        assert share >= SAME_BOXES_MIN, f"only {matched} of {boxes} {what} boxes matched"


@pytest.fixture
def models(exported_onnx: Path, exported_dynamic_onnx: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of both exports: ultralytics may write beside a model file."""
    return {
        name: Path(shutil.copyfile(src, tmp_path / f"{name}.onnx"))
        for name, src in (("static", exported_onnx), ("dynamic", exported_dynamic_onnx))
    }


def released(**given: object) -> Thresholds:
    """The thresholds a release carries, with ``given`` changed (the test's low confidence)."""
    return scoring_thresholds().model_copy(update={"confidence": CONF, **given})


def test_a_release_carries_the_evaluations_thresholds() -> None:
    # the NMS IoU ultralytics validates (and predicts) with, and its rect letterbox
    thresholds = scoring_thresholds()
    assert (thresholds.iou, thresholds.letterbox) == (0.7, "rect")


@pytest.mark.integration
def test_static_export_same_boxes_as_ultralytics(models: dict[str, Path], metal_tags: Path) -> None:
    assert not Detector(models["static"]).dynamic
    _assert_same_boxes(models["static"], _images(metal_tags), released())


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
    _assert_same_boxes(models["dynamic"], _images(metal_tags), released())


@pytest.mark.integration
def test_dynamic_export_square_same_boxes_as_ultralytics(
    models: dict[str, Path], metal_tags: Path
) -> None:
    _assert_same_boxes(models["dynamic"], _images(metal_tags), released(letterbox="square"))

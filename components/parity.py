"""Is the ONNX export the same model? Compare its boxes with the PyTorch weights' boxes.

Both run through ultralytics' own predictor on the same real images; every
PyTorch box (above ``conf``) must have an ONNX box of the same class with IoU >=
``iou_min``. ``PARITY_MIN`` of the boxes must match, or the export is refused.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.yolo_env import configure_offline
from qcloop.errors import PipelineError

PARITY_MIN = 0.95


class Parity(BaseModel):
    """Outcome of the comparison."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: int
    boxes: int
    matched: int
    iou_min: float

    @property
    def share(self) -> float:
        """Matched share of the PyTorch boxes (1.0 when there are none)."""
        return self.matched / self.boxes if self.boxes else 1.0


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4) with every box in ``b`` (M x 4), xyxy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def count_matches(
    ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], iou_min: float
) -> int:
    """How many reference boxes (xyxy, classes) have a same-class partner with IoU >= iou_min."""
    (ref_boxes, ref_cls), (boxes, cls) = ref, other
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return 0
    ious = _iou(ref_boxes, boxes) * (ref_cls[:, None] == cls[None, :])
    return int((ious.max(axis=1) >= iou_min).sum())


def check_parity(
    weights: Path,
    onnx_path: Path,
    images: list[Path],
    *,
    imgsz: int,
    conf: float = 0.25,
    iou_min: float = 0.9,
) -> Parity:
    """Compare the two models on ``images``; ``PipelineError`` if too few boxes match."""
    configure_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="qcloop-parity-") as tmp:
        pt_copy, onnx_copy = Path(tmp) / "model.pt", Path(tmp) / "model.onnx"
        shutil.copyfile(weights, pt_copy)  # ultralytics picks the backend by the suffix
        shutil.copyfile(onnx_path, onnx_copy)
        models = YOLO(str(pt_copy)), YOLO(str(onnx_copy), task="detect")
        boxes = matched = 0
        for image in images:
            # the ONNX side gets 20% slack on conf: a box scoring 0.251 vs 0.249 is the same box
            ref, other = (
                m.predict(str(image), imgsz=imgsz, conf=c, device="cpu", verbose=False)[0].boxes
                for m, c in zip(models, (conf, conf * 0.8), strict=True)
            )
            pair = [(r.xyxy.cpu().numpy(), r.cls.cpu().numpy()) for r in (ref, other)]
            boxes += len(pair[0][0])
            matched += count_matches(pair[0], pair[1], iou_min)
    result = Parity(images=len(images), boxes=boxes, matched=matched, iou_min=iou_min)
    print(
        f"[parity] {matched}/{boxes} PyTorch boxes matched by ONNX (IoU >= {iou_min}) "
        f"on {len(images)} images"
    )
    if result.share < PARITY_MIN:
        raise PipelineError(
            f"{onnx_path}: only {result.share:.0%} of the PyTorch boxes are found by the ONNX "
            f"export (IoU >= {iou_min}, need {PARITY_MIN:.0%}); the export is broken, not deployed"
        )
    return result

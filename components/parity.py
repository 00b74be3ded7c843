"""Is the ONNX export the same model? Compare its raw outputs with the PyTorch weights'.

Both models see the same letterboxed tensor of each real image; every candidate
box (an anchor whose best class score reaches ``conf`` in either model, before
NMS) must agree within ``box_tol`` pixels on x, y, w, h and ``score_tol`` on every
class score. ``PARITY_MIN`` of the candidates must agree, or the export is refused.

Comparing before NMS keeps the check about the network: after NMS a low-confidence
box beside a stronger one survives or not on a hair's difference (seen on a
100-epoch model: 12 of 13 boxes matched, the 13th a 0.26 box overlapping a 0.40
one, both models having the same candidates to within 0.01 px).
``count_matches`` (box-level IoU matching) serves the edge agent's parity tests.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from qcloop.boxes import iou_matrix
from qcloop.errors import PipelineError
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)

PARITY_MIN = 0.95
BOX_TOL_PX = 1.0
SCORE_TOL = 0.02


class Parity(BaseModel):
    """Outcome of the comparison."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: int
    boxes: int = 0  # candidates compared
    matched: int = 0  # candidates within tolerance
    box_tol_px: float = BOX_TOL_PX
    score_tol: float = SCORE_TOL
    worst_box_px: float = 0.0
    worst_score: float = 0.0

    @property
    def share(self) -> float:
        """Agreeing share of the candidates (1.0 when there are none)."""
        return self.matched / self.boxes if self.boxes else 1.0


def count_matches(
    ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], iou_min: float
) -> int:
    """How many reference boxes (xyxy, classes) have a same-class partner with IoU >= iou_min."""
    (ref_boxes, ref_cls), (boxes, cls) = ref, other
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return 0
    ious = iou_matrix(ref_boxes, boxes) * (ref_cls[:, None] == cls[None, :])
    return int((ious.max(axis=1) >= iou_min).sum())


def letterboxed_tensor(image: Path, imgsz: int) -> np.ndarray:
    """1x3ximgszximgsz float32 RGB tensor of ``image``, letterboxed as ultralytics does."""
    import cv2
    from ultralytics.data.augment import LetterBox

    bgr = cv2.imread(str(image))
    if bgr is None:
        raise PipelineError(f"{image}: not a readable image")
    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=False)(image=bgr)
    chw = boxed[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(chw[None])


def compare_raw(
    ref: np.ndarray, other: np.ndarray, *, conf: float, box_tol: float, score_tol: float
) -> tuple[int, int, float, float]:
    """Compare two raw YOLOv8 outputs (1 x (4 + classes) x anchors, xywh then scores).

    Returns (candidates, agreeing, worst box difference in px, worst score difference)
    over the anchors whose best class score reaches ``conf`` in either output.
    """
    ref, other = ref[0], other[0]
    if ref.shape != other.shape:
        raise PipelineError(f"raw outputs differ in shape: {ref.shape} vs {other.shape}")
    best = np.maximum(ref[4:].max(axis=0), other[4:].max(axis=0))
    keep = best >= conf
    if not keep.any():
        return 0, 0, 0.0, 0.0
    box_diff = np.abs(ref[:4, keep] - other[:4, keep]).max(axis=0)
    score_diff = np.abs(ref[4:, keep] - other[4:, keep]).max(axis=0)
    agree = (box_diff <= box_tol) & (score_diff <= score_tol)
    return int(keep.sum()), int(agree.sum()), float(box_diff.max()), float(score_diff.max())


def check_parity(
    weights: Path | list[Path],
    onnx_path: Path,
    images: list[Path],
    *,
    imgsz: int,
    conf: float = 0.25,
    box_tol: float = BOX_TOL_PX,
    score_tol: float = SCORE_TOL,
) -> Parity:
    """Compare the two models on ``images``; ``PipelineError`` if too few candidates agree.

    Candidates are taken from ``0.8 * conf`` so that a box just under the threshold
    in one model and just over it in the other is compared, not missed. For an
    ensemble (components/ensemble.py) ``weights`` lists the members in order: their
    outputs, concatenated, are what the one ONNX graph must give.
    """
    configure_offline()
    import onnxruntime as ort
    import torch
    from ultralytics import YOLO

    members = [Path(weights)] if isinstance(weights, (str, Path)) else [Path(w) for w in weights]
    networks = []
    with tempfile.TemporaryDirectory(prefix="qcloop-parity-") as tmp:
        for index, member in enumerate(members):
            pt_copy = Path(tmp) / f"model{index}.pt"
            shutil.copyfile(member, pt_copy)  # ultralytics picks the loader by the suffix
            networks.append(YOLO(str(pt_copy)).model.float().eval())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    boxes = matched = 0
    worst_box = worst_score = 0.0
    for image in images:
        tensor = letterboxed_tensor(image, imgsz)
        outs = []
        with torch.no_grad():
            for network in networks:
                out = network(torch.from_numpy(tensor))
                outs.append((out[0] if isinstance(out, (list, tuple)) else out).numpy())
        ref = np.concatenate(outs, axis=2)
        other = session.run(None, {name: tensor})[0]
        if ref.shape != other.shape:
            raise PipelineError(
                f"{onnx_path}: output shape {list(other.shape)} differs from the PyTorch "
                f"model's {list(ref.shape)}; the export is broken, not deployed"
            )
        n, ok, wb, ws = compare_raw(
            ref, other, conf=conf * 0.8, box_tol=box_tol, score_tol=score_tol
        )
        boxes, matched = boxes + n, matched + ok
        worst_box, worst_score = max(worst_box, wb), max(worst_score, ws)
    result = Parity(
        images=len(images),
        boxes=boxes,
        matched=matched,
        box_tol_px=box_tol,
        score_tol=score_tol,
        worst_box_px=round(worst_box, 4),
        worst_score=round(worst_score, 5),
    )
    log.info(
        "%d/%d candidate boxes agree (within %s px and %s score; worst %.3f px, %.4f) on %d images",
        matched,
        boxes,
        box_tol,
        score_tol,
        worst_box,
        worst_score,
        len(images),
    )
    if result.share < PARITY_MIN:
        raise PipelineError(
            f"{onnx_path}: only {result.share:.0%} of the candidate boxes of the PyTorch model "
            f"agree with the ONNX export (within {box_tol} px and {score_tol} score, need "
            f"{PARITY_MIN:.0%}); the export is broken, not deployed"
        )
    return result

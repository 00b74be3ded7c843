"""Box geometry on xyxy pixel boxes with numpy only: IoU, greedy NMS and class-wise NMS.

The edge agent suppresses its detections with it and the platform compares an
export's boxes with its source model's through it, so both sides measure overlap
the same way. numpy only: an edge box has neither torch nor ultralytics.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MAX_WH = 7680.0  # per-class offset for class-wise NMS: larger than any input side
MAX_NMS = 30000  # candidates kept (highest scores) before NMS, as ultralytics

__all__ = ["MAX_NMS", "MAX_WH", "area", "batched_nms", "iou_matrix", "iou_one_to_many", "nms"]

FloatArray = npt.NDArray[np.floating]
IndexArray = npt.NDArray[np.int64]


def area(boxes: FloatArray) -> FloatArray:
    """Area of each xyxy box of an N x 4 array (negative for an inverted box)."""
    result: FloatArray = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return result


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box of ``a`` (N x 4) with every box of ``b`` (M x 4): an N x M array.

    A pair whose union is empty (degenerate boxes) has IoU 0.
    """
    rows, cols = a[:, None, :], b[None, :, :]  # N x 1 x 4 against 1 x M x 4
    width = np.minimum(rows[..., 2], cols[..., 2]) - np.maximum(rows[..., 0], cols[..., 0])
    height = np.minimum(rows[..., 3], cols[..., 3]) - np.maximum(rows[..., 1], cols[..., 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    result: FloatArray = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return result


def iou_one_to_many(box: FloatArray, boxes: FloatArray) -> FloatArray:
    """IoU of one xyxy box (4 values) with each of ``boxes`` (M x 4)."""
    row: FloatArray = iou_matrix(box[None, :], boxes)[0]
    return row


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> IndexArray:
    """Indices kept by greedy NMS, best score first (drops IoU > threshold)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        order = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: npt.NDArray[np.integer],
    iou_threshold: float,
) -> IndexArray:
    """Class-wise NMS over the ``MAX_NMS`` best boxes: classes never suppress each other.

    Each class's boxes are shifted by ``MAX_WH`` times its id, so one NMS pass
    never sees two classes overlap (as ultralytics does).
    """
    top = np.argsort(-scores, kind="stable")[:MAX_NMS]
    offsets = class_ids[top].astype(np.float32)[:, None] * MAX_WH
    kept: IndexArray = top[nms(boxes[top] + offsets, scores[top], iou_threshold)]
    return kept

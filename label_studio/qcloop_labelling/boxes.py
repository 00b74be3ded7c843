"""Box geometry between the three worlds, pure functions.

- qcloop ``Detection``: pixels, ``x1, y1, x2, y2``;
- Label Studio ``rectanglelabels`` result: percent of the image, ``x, y, width, height``
  of the top-left corner (``rotation`` 0);
- YOLO line: normalised ``class cx cy w h``.
"""

from __future__ import annotations

import math
from typing import Any

from qcloop.contracts import Detection
from qcloop.yolo import YoloBox

FROM_NAME = "label"  # the RectangleLabels control of labeling_config.xml
TO_NAME = "image"  # the Image object of labeling_config.xml
RESULT_TYPE = "rectanglelabels"
EDGE_TOLERANCE = 0.05  # percent: the browser rounds boxes dragged onto the border


def _rect(
    x: float,
    y: float,
    w: float,
    h: float,
    label: str,
    width: int,
    height: int,
    names: tuple[str, str] = (FROM_NAME, TO_NAME),
) -> dict:
    return {
        "from_name": names[0],
        "to_name": names[1],
        "type": RESULT_TYPE,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def detection_to_result(
    det: Detection, width: int, height: int, names: tuple[str, str] = (FROM_NAME, TO_NAME)
) -> dict[str, Any]:
    """A predicted pixel box as a Label Studio result (percent), with its score; ``names``:
    the labelling config's (from_name, to_name)."""
    x1, y1, x2, y2 = det.box
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    result = _rect(
        100.0 * x1 / width,
        100.0 * y1 / height,
        100.0 * (x2 - x1) / width,
        100.0 * (y2 - y1) / height,
        det.label,
        width,
        height,
        names,
    )
    result["score"] = det.score
    return result


def yolo_to_result(box: YoloBox, names: list[str], width: int, height: int) -> dict[str, Any]:
    """A YOLO box as a Label Studio result (percent)."""
    return _rect(
        100.0 * (box.cx - box.w / 2),
        100.0 * (box.cy - box.h / 2),
        100.0 * box.w,
        100.0 * box.h,
        names[box.class_id],
        width,
        height,
    )


def result_to_yolo(result: dict[str, Any], names: list[str]) -> YoloBox:
    """A Label Studio rectangle as a YOLO box; ``ValueError`` says what is wrong with it."""
    if result.get("type") != RESULT_TYPE or result.get("from_name") != FROM_NAME:
        raise ValueError(
            f"unexpected result {result.get('from_name')}/{result.get('type')}; "
            f"only '{FROM_NAME}' rectangles are converted"
        )
    value = result.get("value") or {}
    labels = value.get("rectanglelabels") or []
    if len(labels) != 1 or labels[0] not in names:
        raise ValueError(f"label {labels} is not one of the known classes {names}")
    x, y = float(value["x"]), float(value["y"])
    w, h = float(value["width"]), float(value["height"])
    rotation = float(value.get("rotation") or 0.0)
    numbers = {"x": x, "y": y, "width": w, "height": h, "rotation": rotation}
    broken = [f"{k}={v}" for k, v in numbers.items() if not math.isfinite(v)]
    if broken:  # NaN passes every comparison below and would become a full-image box
        raise ValueError(f"box has {', '.join(broken)}, not a finite number; redraw it")
    if abs(rotation) > 1e-6:
        raise ValueError(f"box is rotated by {value['rotation']} degrees; draw it unrotated")
    if w <= 0 or h <= 0:
        raise ValueError(f"box x={x:.2f}% y={y:.2f}% has no area (width {w}%, height {h}%)")
    tol = EDGE_TOLERANCE
    if x < -tol or y < -tol or x + w > 100 + tol or y + h > 100 + tol:
        raise ValueError(
            f"box x={x:.2f}% y={y:.2f}% w={w:.2f}% h={h:.2f}% reaches outside the image"
        )
    x1, y1 = max(0.0, x) / 100, max(0.0, y) / 100
    x2, y2 = min(100.0, x + w) / 100, min(100.0, y + h) / 100
    return YoloBox(names.index(labels[0]), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)

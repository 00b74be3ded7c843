"""Bilinear resizing, pixel for pixel as OpenCV's ``INTER_LINEAR`` on 8-bit images, in numpy.

Ultralytics letterboxes every frame with ``cv2.resize(..., INTER_LINEAR)``; a model is
scored on those pixels. Pillow's bilinear filter widens its kernel when it shrinks an
image (anti-aliasing), which moves boxes: on real photos only ~77% of a weak model's
boxes matched ultralytics' (IoU >= 0.9) with it, all of them with this resize. OpenCV
itself costs ~25 MB of memory to import, which an edge box may not want.

OpenCV computes in fixed point: per column two weights of 11 bits applied to the
source pixels (``S = a0 * p0 + a1 * p1``), then per row two weights on those sums,
rounded as its vector code does: ``((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2 >> 2``.
The weights depend on the sizes only, and are kept for the few sizes a camera sends.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
COEF_ONE = 1 << COEF_BITS


class ResizePlan(NamedTuple):
    """Which source values each output value reads, and with which weights."""

    rows: np.ndarray  # source rows any output row reads
    cols0: np.ndarray  # per output value of a row (x * 3 + channel): first source value
    cols1: np.ndarray  # second source value
    alpha0: np.ndarray  # int32 weights of cols0, cols1
    alpha1: np.ndarray
    row0: np.ndarray  # per output row: index into ``rows`` of its first source row
    row1: np.ndarray
    beta0: np.ndarray  # int32 weights of row0, row1, shaped (height, 1)
    beta1: np.ndarray


def _positions(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """First source index and float32 fraction of each output index (centres aligned)."""
    scale = 1.0 / (target / source)  # as OpenCV computes it, in double
    exact = ((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(exact).astype(np.int64)
    return first, exact - first.astype(np.float32)


def _weights(fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    one = np.float32(1.0)
    w0 = np.rint((one - fraction) * COEF_ONE).astype(np.int32)
    return w0, np.rint(fraction * COEF_ONE).astype(np.int32)


@lru_cache(maxsize=16)
def resize_plan(source: tuple[int, int], target: tuple[int, int]) -> ResizePlan:
    """The plan of a (width, height) ``source`` resized to (width, height) ``target``."""
    (src_w, src_h), (dst_w, dst_h) = source, target
    x, fx = _positions(src_w, dst_w)
    outside = (x < 0) | (x >= src_w - 1)  # OpenCV replicates the border pixel
    x = np.clip(x, 0, src_w - 1)
    fx[outside] = 0.0
    a0, a1 = _weights(fx)
    channel = np.arange(3)
    cols0 = (x[:, None] * 3 + channel).ravel()
    cols1 = (np.minimum(x + 1, src_w - 1)[:, None] * 3 + channel).ravel()
    y, fy = _positions(src_h, dst_h)  # rows: weights kept, indices clamped
    b0, b1 = _weights(fy)
    first, second = np.clip(y, 0, src_h - 1), np.clip(y + 1, 0, src_h - 1)
    rows, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    return ResizePlan(
        rows,
        cols0,
        cols1,
        np.repeat(a0, 3),
        np.repeat(a1, 3),
        inverse[:dst_h],
        inverse[dst_h:],
        b0[:, None],
        b1[:, None],
    )


def resize_linear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``pixels`` (HxWx3 uint8) resized to ``size`` (width, height) as OpenCV's
    ``INTER_LINEAR`` does; int32 values 0-255, HxWx3 (the caller casts or scales them)."""
    height, width = pixels.shape[:2]
    plan = resize_plan((width, height), size)
    flat = pixels.reshape(height, width * 3)
    if len(plan.rows) < height:
        flat = flat[plan.rows]
    across = np.take(flat, plan.cols0, axis=1).astype(np.int32)
    across *= plan.alpha0
    second = np.take(flat, plan.cols1, axis=1).astype(np.int32)
    second *= plan.alpha1
    across += second
    across >>= 4
    out = across[plan.row0]
    out *= plan.beta0
    out >>= 16
    lower = across[plan.row1]
    lower *= plan.beta1
    lower >>= 16
    out += lower
    out += 2
    out >>= 2
    resized: np.ndarray = out.reshape(size[1], size[0], 3)
    return resized

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

``resize_frame`` is what the agent calls: OpenCV itself where the process has it loaded
anyway (a camera source imports it: the same pixels, ~10x faster), this numpy code
otherwise; ``QCLOOP_EDGE_RESIZE`` overrides (``resize_backend``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
COEF_ONE = 1 << COEF_BITS
CHUNK_ROWS = 32  # output rows resized at a time (their sums fit in a core's cache)
_LOCAL = threading.local()  # each thread's buffers (``thread_buffer``)
BACKENDS = ("auto", "numpy", "opencv")  # QCLOOP_EDGE_RESIZE

log = logging.getLogger(__name__)


def resize_backend() -> str:
    """How frames are resized, from ``QCLOOP_EDGE_RESIZE`` (all give the same pixels:
    OpenCV's ``INTER_LINEAR``, which ultralytics letterboxes with):

    ``auto`` (default)  OpenCV where the process has loaded it anyway (a camera source
                        does), else numpy: its speed (~0.2 against ~1.7-2.4 ms a 450x300
                        frame) without importing it for the resize (~25 MB of RSS)
    ``opencv``          imports OpenCV (the ``camera`` extra installs it); numpy if it
                        is not installed
    ``numpy``           numpy always
    """
    choice = os.environ.get("QCLOOP_EDGE_RESIZE", "auto")
    if choice not in BACKENDS:
        log.warning(
            "QCLOOP_EDGE_RESIZE is not one of auto, numpy, opencv: auto",
            extra={"value": choice[:40]},
        )
        return "auto"
    if choice == "opencv":
        try:
            import cv2  # noqa: F401
        except ImportError:
            return "numpy"
    return choice


RESIZE = resize_backend()


def _opencv() -> Any:
    """cv2 if this frame is resized with it (``RESIZE``), else None."""
    if RESIZE == "numpy":
        return None
    cv2 = sys.modules.get("cv2")  # a dict lookup: loaded by the camera, or for ``opencv``
    return cv2 if hasattr(cv2, "resize") else None  # None: not loaded, or blocked


class ResizePlan(NamedTuple):
    """Which source values each output value reads, and with which weights."""

    rows: np.ndarray  # source rows any output row reads
    cols0: np.ndarray  # per output value of a row (x * 3 + channel): first source value,
    # in a source row of ``channels`` values a pixel
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
def resize_plan(source: tuple[int, int], target: tuple[int, int], channels: int = 3) -> ResizePlan:
    """The plan of a (width, height) ``source`` resized to (width, height) ``target``; the
    source has ``channels`` values a pixel (4: RGBX, as Pillow holds RGB), the first three
    R, G, B, and only those are read."""
    (src_w, src_h), (dst_w, dst_h) = source, target
    x, fx = _positions(src_w, dst_w)
    outside = (x < 0) | (x >= src_w - 1)  # OpenCV replicates the border pixel
    x = np.clip(x, 0, src_w - 1)
    fx[outside] = 0.0
    a0, a1 = _weights(fx)
    channel = np.arange(3)
    cols0 = (x[:, None] * channels + channel).ravel()
    cols1 = (np.minimum(x + 1, src_w - 1)[:, None] * channels + channel).ravel()
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


def thread_buffer(name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """This thread's buffer ``name`` of ``shape`` and ``dtype``, kept from call to call (made
    anew only when the shape changes): a frame-sized block is not mapped, faulted in and
    given back for every frame. Its contents are the caller's until its next call."""
    buffers: dict[str, np.ndarray] = _LOCAL.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
        buffer = buffers[name] = np.empty(shape, dtype)
    return buffer


def resize_linear(pixels: np.ndarray, size: tuple[int, int], *, reuse: bool = False) -> np.ndarray:
    """``pixels`` (HxWxC uint8, C 3 or 4 with R, G, B first: ``edge_agent.pixels``) resized
    to ``size`` (width, height) as OpenCV's ``INTER_LINEAR`` does: HxWx3 uint8.

    ``CHUNK_ROWS`` output rows at a time, through this thread's scratch buffers: the
    work stays in the CPU's cache and no frame-sized block is allocated (and faulted
    in) for the intermediate sums. With ``reuse`` the result is this thread's buffer
    too, overwritten by its next ``reuse`` call: for pixels copied out right away.
    """
    height, width, channels = pixels.shape
    dst_w, dst_h = size
    plan = resize_plan((width, height), size, channels)
    row_len = dst_w * 3
    flat = pixels.reshape(height, width * channels)
    resized = (
        thread_buffer("resized", (dst_h, row_len), np.uint8)
        if reuse
        else np.empty((dst_h, row_len), np.uint8)
    )
    most = 2 * CHUNK_ROWS  # source rows a chunk reads at most (two per output row)
    for start in range(0, dst_h, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, dst_h)
        lo, hi = int(plan.row0[start]), int(plan.row1[stop - 1]) + 1  # into plan.rows
        first, last = int(plan.rows[lo]), int(plan.rows[hi - 1])
        if last - first == hi - lo - 1:  # consecutive source rows: read in place
            source = flat[first : last + 1]
        else:
            source = thread_buffer("source", (most, width * channels), np.uint8)[: hi - lo]
            np.take(flat, plan.rows[lo:hi], axis=0, out=source, mode="clip")
        # across each source row: S = a0 * p0 + a1 * p1, then S >> 4
        picked = thread_buffer("picked", (most, row_len), np.uint8)[: hi - lo]
        across = thread_buffer("across", (most, row_len), np.int32)[: hi - lo]
        second = thread_buffer("second", (most, row_len), np.int32)[: hi - lo]
        np.take(source, plan.cols0, axis=1, out=picked, mode="clip")
        np.multiply(picked, plan.alpha0, out=across)
        np.take(source, plan.cols1, axis=1, out=picked, mode="clip")
        np.multiply(picked, plan.alpha1, out=second)
        across += second
        across >>= 4
        # down the rows: ((S0 * b0) >> 16) + ((S1 * b1) >> 16) + 2 >> 2
        upper = thread_buffer("upper", (CHUNK_ROWS, row_len), np.int32)[: stop - start]
        lower = thread_buffer("lower", (CHUNK_ROWS, row_len), np.int32)[: stop - start]
        np.take(across, plan.row0[start:stop] - lo, axis=0, out=upper, mode="clip")
        upper *= plan.beta0[start:stop]
        upper >>= 16
        np.take(across, plan.row1[start:stop] - lo, axis=0, out=lower, mode="clip")
        lower *= plan.beta1[start:stop]
        lower >>= 16
        upper += lower
        upper += 2
        np.right_shift(upper, 2, out=resized[start:stop], casting="unsafe")
    return resized.reshape(dst_h, dst_w, 3)


def resizer() -> str:
    """What ``resize_frame`` resizes with in this process now: ``opencv`` or ``numpy``."""
    return "numpy" if _opencv() is None else "opencv"


def resize_frame(pixels: np.ndarray, size: tuple[int, int], *, reuse: bool = False) -> np.ndarray:
    """``pixels`` (HxWxC uint8, C 3 or 4, R, G, B first) resized to ``size`` (width,
    height) as OpenCV's ``INTER_LINEAR`` does: by OpenCV where ``resize_backend`` allows
    it, else by ``resize_linear`` (``reuse``: its buffer). R, G, B stay first."""
    cv2 = _opencv()
    if cv2 is not None:
        return cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)  # type: ignore[no-any-return]
    return resize_linear(pixels, size, reuse=reuse)

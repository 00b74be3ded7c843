"""Keep the agent's heap small over months: few malloc arenas, freed pages given back.

An onnxruntime session of a 12 MB YOLOv8n takes ~65 MB (weights, pre-packed
weights, activation arena). When a replaced model is dropped, glibc keeps most of
those pages mapped, so the process would carry every model it ever served in its
RSS: ``trim_heap`` (``malloc_trim(0)``) returns them (measured: +50 MB left after a
session is freed, +11 MB after the trim). glibc also gives each thread that
allocates its own arena (up to 8 per core), each keeping freed memory;
``limit_arenas`` caps them at 2, as ``MALLOC_ARENA_MAX=2`` would (measured: ~10 MB
less, no slower). glibc also raises its threshold for giving a block its own
mapping each time such a block is freed, so after the first frames a decoded frame
(7 MB at 1920x1280) and its copies are carved from the heap and stay there;
``map_large_blocks`` fixes that threshold at 256 KiB, so they are mapped and given
back one by one (measured on 1920x1280 frames, two workers: peak RSS 276 -> 223 MB,
``python -m benchmarks.bench_edge --width 1920 --paths agent@w2t1``). A block that is
mapped afresh for every frame is faulted in page by page, so the frame path reuses its
buffers instead (``edge_agent.resize.thread_buffer``), reads the decoded frame where
Pillow holds it (``edge_agent.pixels``), and
``cache_image_blocks`` has Pillow keep a few freed image blocks for the next decode, as
``PILLOW_BLOCKS_MAX`` would (measured: a 450x300 decode 1.2 -> 0.7 ms,
``python -m benchmarks.bench_edge_profile``). ``set_up_heap`` does all of this, before
the threads start. Elsewhere than glibc the malloc settings do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_ARENA_MAX = -8  # mallopt parameters, glibc's malloc.h
M_MMAP_THRESHOLD = -3
LARGE_BLOCK = 256 * 1024  # bytes: a frame's row block is larger, a detection's arrays smaller
IMAGE_BLOCKS = 4  # freed Pillow image blocks kept: about the frames decoded but not yet done


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS)
        return None


_LIBC = _libc()


def trim_heap() -> bool:
    """Return free heap pages to the system; True where that is possible (glibc)."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


def limit_arenas(count: int = 2) -> bool:
    """At most ``count`` malloc arenas for threads started from now on (glibc)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, count))


def map_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Give every block of ``threshold`` bytes or more its own mapping, returned when freed
    (glibc; this also stops glibc from raising the threshold as blocks are freed)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, threshold))


def cache_image_blocks(count: int = IMAGE_BLOCKS) -> bool:
    """Pillow keeps up to ``count`` freed image blocks and decodes the next frames into
    them (its ``PILLOW_BLOCKS_MAX``); False where this Pillow has no such setting."""
    from PIL import Image

    set_blocks_max = getattr(getattr(Image, "core", None), "set_blocks_max", None)
    if set_blocks_max is None:
        return False
    set_blocks_max(count)
    return True


def set_up_heap() -> None:
    """The heap as the agent runs it: few arenas, large blocks mapped, image blocks kept.
    Call it before the threads that decode and infer start."""
    limit_arenas()
    map_large_blocks()
    cache_image_blocks()

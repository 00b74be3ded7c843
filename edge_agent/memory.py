"""Keep the agent's heap small over months: few malloc arenas, freed pages given back.

An onnxruntime session of a 12 MB YOLOv8n takes ~65 MB (weights, pre-packed
weights, activation arena). When a replaced model is dropped, glibc keeps most of
those pages mapped, so the process would carry every model it ever served in its
RSS: ``trim_heap`` (``malloc_trim(0)``) returns them (measured: +50 MB left after a
session is freed, +11 MB after the trim). glibc also gives each thread that
allocates its own arena (up to 8 per core), each keeping freed memory;
``limit_arenas`` caps them at 2, as ``MALLOC_ARENA_MAX=2`` would (measured: ~10 MB
less, no slower). Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_ARENA_MAX = -8  # mallopt parameter, glibc's malloc.h


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

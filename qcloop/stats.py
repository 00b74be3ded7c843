"""Summary statistics both sides report: the edge agent's heartbeat and the platform's
evaluation give latency percentiles computed the same way, so they compare."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty collection.

    The result is always one of the values (a latency that was measured), never an
    interpolation between two.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]

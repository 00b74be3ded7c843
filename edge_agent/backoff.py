"""Exponential backoff for whatever the agent retries: uploads to the store, a camera stream,
a release's download."""

from __future__ import annotations

import random


class Backoff:
    """Exponential delays: ``initial``, 2x, 4x ... up to ``maximum``; ``reset`` on success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._failures = 0

    def __repr__(self) -> str:
        return f"Backoff(initial={self.initial}, maximum={self.maximum})"

    def failed(self) -> float:
        """Record a failure; the delay before the next try."""
        self._failures += 1
        return float(min(self.initial * 2 ** (self._failures - 1), self.maximum))

    def failed_jittered(self) -> float:
        """``failed``, drawn in [1/2, 1] of its delay: devices that failed together (a
        store down for a fleet) do not all try again at the same moment."""
        return self.failed() * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """A success: the next failure starts from ``initial`` again."""
        self._failures = 0

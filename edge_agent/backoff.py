"""Exponential backoff for whatever the agent retries: uploads to the store, a camera stream."""

from __future__ import annotations


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

    def reset(self) -> None:
        """A success: the next failure starts from ``initial`` again."""
        self._failures = 0

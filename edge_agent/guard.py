"""A frame that kills the agent is set aside at the next start, not read again and again.

Before a hot-folder frame is decoded, ``DecodeGuard`` writes its path to a marker
file in the state folder, and removes the marker once the decoder returned. A
marker still there at start means the previous run died decoding that frame (a
decoder crash, the kernel's OOM killer): ``set_aside_culprit`` moves the file to
``rejected/`` with the reason, so a restart does not crash on it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_agent.sources import Frame, FrameSource
from edge_agent.stats import Counters

log = logging.getLogger(__name__)

CULPRIT_REASON = "the agent stopped while decoding this frame (crash or out of memory?)"
MARKER_NAME = "decoding"  # in the state folder


class DecodeGuard:
    """Keeps the path of the frame being decoded in ``marker`` (one decode at a time)."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __repr__(self) -> str:
        return f"DecodeGuard({str(self.marker)!r})"

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> DecodeGuard:
        """The guard whose marker lives in the agent's state folder."""
        return cls(Path(state_dir) / MARKER_NAME)

    @contextmanager
    def decoding(self, frame: Frame) -> Iterator[None]:
        """Mark ``frame`` as being decoded while inside (frames without a file: no marker)."""
        if frame.path is None:
            yield
            return
        try:
            self.marker.write_text(str(frame.path))
        except OSError as exc:  # no protection for this frame, inspection goes on
            log.warning("cannot write the decode marker", extra={"error": str(exc)})
        try:
            yield
        finally:
            self.marker.unlink(missing_ok=True)

    def culprit(self) -> Path | None:
        """The file a previous run died decoding, if it is still there; clears the marker."""
        try:
            text = self.marker.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the decode marker", extra={"error": str(exc)})
            return None
        self.marker.unlink(missing_ok=True)
        path = Path(text)
        return path if text and path.is_file() else None


def set_aside_culprit(guard: DecodeGuard, source: FrameSource, counters: Counters) -> None:
    """At start: move the frame the previous run died on to ``rejected/``, counted."""
    path = guard.culprit()
    if path is None:
        return
    counters.add("frames_rejected")
    source.reject(Frame(name=str(path), data=b"", path=path), CULPRIT_REASON)

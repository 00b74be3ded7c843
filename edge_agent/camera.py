"""A real camera or stream through OpenCV (``pip install 'qcloop[camera]'``).

``url`` is what ``cv2.VideoCapture`` opens: a device index (``"0"``), an RTSP or
HTTP stream (``rtsp://user:pass@cam/stream``) or a video file. Frames are
JPEG-encoded once (the bytes the agent decodes and, for feedback, uploads).
A stream that drops is reopened with backoff; the loop never stops for it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from edge_agent.backoff import Backoff
from edge_agent.sources import Frame

log = logging.getLogger(__name__)
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0


def redact(url: str) -> str:
    """The URL without its password (for logs)."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1****@", url)


class CameraSource:
    """Frames from ``cv2.VideoCapture(url)``, at most ``max_fps`` per second."""

    def __init__(self, url: str, *, max_fps: float = 0.0, jpeg_quality: int = 90) -> None:
        try:
            import cv2
        except ImportError:
            raise ImportError(
                "source.kind = 'camera' needs OpenCV: pip install 'qcloop[camera]'"
            ) from None
        self._cv2: Any = cv2
        self.url = url
        self.max_fps = max_fps
        self.jpeg_quality = jpeg_quality
        self._capture: Any = None
        self._count = 0
        self._next_at = 0.0
        self._retry_at = 0.0
        self._backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)

    def __repr__(self) -> str:
        return f"CameraSource(url={redact(self.url)!r}, max_fps={self.max_fps})"

    def _open(self) -> bool:
        target: int | str = int(self.url) if self.url.isdigit() else self.url
        capture = self._cv2.VideoCapture(target)
        if capture.isOpened():
            self._capture = capture
            self._backoff.reset()
            log.info("camera opened", extra={"url": redact(self.url)})
            return True
        capture.release()
        delay = self._backoff.failed()
        self._retry_at = time.monotonic() + delay
        log.error("camera not available", extra={"url": redact(self.url), "retry_s": delay})
        return False

    def next_frame(self, timeout: float) -> Frame | None:
        """The next frame, or None (no frame yet, stream down: reopened later)."""
        now = time.monotonic()
        if self._capture is None and (now < self._retry_at or not self._open()):
            time.sleep(max(0.0, min(timeout, self._retry_at - now)))
            return None
        if self.max_fps > 0 and now < self._next_at:
            time.sleep(min(timeout, self._next_at - now))
            if time.monotonic() < self._next_at:
                return None
        ok, image = self._capture.read()
        if not ok:
            log.warning("camera stream ended or dropped", extra={"url": redact(self.url)})
            self._capture.release()
            self._capture = None
            self._retry_at = time.monotonic() + self._backoff.failed()
            return None
        self._next_at = time.monotonic() + (1.0 / self.max_fps if self.max_fps > 0 else 0.0)
        params = [self._cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        ok, jpeg = self._cv2.imencode(".jpg", image, params)
        if not ok:
            return None
        self._count += 1
        return Frame(name=f"camera-{self._count:08d}.jpg", data=jpeg.tobytes())

    def done(self, frame: Frame) -> None:
        """Nothing to clean up for a camera frame."""

    def reject(self, frame: Frame, reason: str) -> None:
        log.warning("camera frame rejected", extra={"frame": frame.name, "error": reason})

    def close(self) -> None:
        """Release the device or stream."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

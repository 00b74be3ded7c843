"""Send hard frames back to the raw store, in the background, never blocking inspection.

``build_sidecar`` describes a frame (content address, size, model, predictions);
``FeedbackUploader`` uploads image + sidecar with ``qcloop.storage.put_raw_image``
from one worker thread. Uploads are content-addressed, so a retry never makes a
duplicate. A failed upload is logged, counted and retried a few times from an
in-memory queue (bounded: the oldest image is dropped when it is full).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from qcloop.contracts import Detection, ModelRef, RawImageSidecar
from qcloop.storage import put_raw_image, raw_key, sha256_bytes

log = logging.getLogger(__name__)

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}


def build_sidecar(
    data: bytes,
    image: Image.Image,
    *,
    device_id: str,
    frame_name: str,
    model: ModelRef | None,
    predictions: list[Detection],
) -> RawImageSidecar:
    """The sidecar of a low-confidence frame, keyed by the sha256 of its bytes."""
    fmt = image.format or "JPEG"
    sha = sha256_bytes(data)
    return RawImageSidecar(
        key=raw_key(sha, EXTENSIONS.get(fmt, fmt.lower())),
        sha256=sha,
        content_type=Image.MIME.get(fmt, "application/octet-stream"),
        width=image.width,
        height=image.height,
        source=device_id,
        device_id=device_id,
        reason="low_confidence",
        original_name=Path(frame_name).name,
        model=model,
        predictions=predictions,
    )


@dataclass(frozen=True)
class _Item:
    data: bytes
    sidecar: RawImageSidecar
    attempts: int = 0
    not_before: float = 0.0


class FeedbackUploader:
    """One worker thread uploading queued images; ``submit`` never blocks nor raises."""

    def __init__(
        self,
        store: LazyStore,
        counters: Counters,
        *,
        queue_size: int = 100,
        max_attempts: int = 3,
        retry_delay_s: float = 2.0,
    ) -> None:
        self._store = store
        self._counters = counters
        self._max_attempts = max_attempts
        self._retry_delay_s = retry_delay_s
        self._queue: deque[_Item] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._draining = False
        self._stopped = False
        self._busy = False
        self._thread = threading.Thread(target=self._work, name="qcloop-feedback", daemon=True)

    def start(self) -> None:
        """Start the worker."""
        self._thread.start()

    def submit(self, data: bytes, sidecar: RawImageSidecar) -> None:
        """Queue an image for upload."""
        with self._cond:
            if len(self._queue) >= self._queue_size:
                dropped = self._queue.popleft()
                log.error("feedback queue full, image dropped", extra={"key": dropped.sidecar.key})
                self._counters.add("errors")
            self._queue.append(_Item(data, sidecar))
            self._cond.notify()

    def pending(self) -> int:
        """Images queued or being uploaded."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    def close(self, timeout: float) -> int:
        """Retry what is queued for up to ``timeout`` s, then stop; returns images left."""
        with self._cond:
            self._draining = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            self._stopped = True
            left = len(self._queue) + int(self._busy)
            self._queue.clear()
            self._cond.notify()
        if left:  # dropped: the spool that keeps them across restarts comes later
            log.error("feedback images not uploaded at stop", extra={"count": left})
            self._counters.add("errors", left)
        return left

    def _next(self) -> _Item | None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                ready = [i for i in self._queue if self._draining or i.not_before <= now]
                if ready:
                    self._queue.remove(ready[0])
                    self._busy = True
                    return ready[0]
                if self._draining and not self._queue:
                    return None
                waits = [i.not_before - now for i in self._queue]
                self._cond.wait(timeout=min(waits, default=None))
            return None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._upload(item)
            finally:
                with self._cond:
                    self._busy = False

    def _upload(self, item: _Item) -> None:
        try:
            put_raw_image(self._store.get(), item.data, item.sidecar)
        except Exception as exc:  # any store failure: inspection goes on
            if not self._stopped:  # after stop, close() has counted it already
                self._failed(item, exc)
            return
        if not self._stopped:
            self._counters.add("feedback_images")
        log.info("feedback image uploaded", extra={"key": item.sidecar.key})

    def _failed(self, item: _Item, exc: Exception) -> None:
        self._counters.add("errors")
        attempts = item.attempts + 1
        log.error(
            "feedback upload failed",
            extra={"key": item.sidecar.key, "attempt": attempts, "error": str(exc)},
        )
        if attempts >= self._max_attempts:
            log.error("feedback image dropped after retries", extra={"key": item.sidecar.key})
            return
        delay = self._retry_delay_s * 2 ** (attempts - 1)
        with self._cond:
            if not self._stopped:
                self._queue.append(
                    replace(item, attempts=attempts, not_before=time.monotonic() + delay)
                )

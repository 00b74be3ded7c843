"""Send hard frames back to the raw store through the on-disk spool, never blocking inspection.

``build_sidecar`` describes a frame (content address, size, model, predictions).
``FeedbackUploader.submit`` writes image + sidecar into the ``Spool`` (local disk
only, no network: a few ms; synchronous on purpose, so that a frame the hot folder
has let go of is already durable) and returns; one worker thread uploads the spool, highest
priority first, with ``qcloop.storage.put_raw_image``. Keys are content
addresses, so an upload repeated after a failure or a crash never makes a
duplicate. A failed upload waits with exponential backoff (reset by a success);
what is left at stop stays on disk for the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PIL import Image

from edge_agent.backoff import Backoff
from edge_agent.config import EdgeConfig
from edge_agent.spool import Spool, SpoolEntry, priority_of
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from qcloop.contracts import CaptureReason, Detection, ModelRef, RawImageSidecar
from qcloop.errors import QcloopError
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
    reason: CaptureReason = "low_confidence",
    source: str | None = None,
) -> RawImageSidecar:
    """The sidecar of a frame sent back, keyed by the sha256 of its bytes.

    ``source`` defaults to the device id (an operator verdict puts itself there).
    """
    fmt = image.format or "JPEG"
    sha = sha256_bytes(data)
    width, height = image.size
    return RawImageSidecar(
        key=raw_key(sha, EXTENSIONS.get(fmt, fmt.lower())),
        sha256=sha,
        content_type=Image.MIME.get(fmt, "application/octet-stream"),
        width=width,
        height=height,
        source=source or device_id,
        device_id=device_id,
        reason=reason,
        original_name=Path(frame_name).name,
        model=model,
        predictions=predictions,
    )


def make_uploader(config: EdgeConfig, store: LazyStore, counters: Counters) -> FeedbackUploader:
    """The uploader of ``config``, on its spool in ``<state_dir>/spool`` (not started)."""
    settings = config.feedback
    spool = Spool(config.state_dir / "spool", settings.spool_max_bytes, settings.disk_reserve_bytes)
    return FeedbackUploader(
        store,
        counters,
        spool,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
    )


class FeedbackUploader:
    """Spool on ``submit`` (never raises), upload from one worker thread."""

    def __init__(
        self,
        store: LazyStore,
        counters: Counters,
        spool: Spool,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
    ) -> None:
        self._store = store
        self._counters = counters
        self.spool = spool
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._wake = threading.Condition()
        self._stopped = False
        self._deadline: float | None = None  # set by close(): drain until then
        self._thread = threading.Thread(target=self._work, name="qcloop-feedback", daemon=True)

    def start(self) -> None:
        """Start the worker (it resumes what a previous run left in the spool)."""
        self._thread.start()

    def submit(self, data: bytes, sidecar: RawImageSidecar) -> bool:
        """Spool an image for upload; False if it was dropped (spool full, disk error)."""
        try:
            dropped = self.spool.put(data, sidecar, priority_of(sidecar))
        except OSError as exc:
            log.error("cannot spool feedback image", extra={"key": sidecar.key, "error": str(exc)})
            self._counters.add("errors")
            return False
        for entry in dropped:
            log.warning("spool full, feedback image dropped", extra={"sha256": entry.sha256})
        self._counters.add("feedback_dropped", len(dropped))
        kept = all(e.sha256 != sidecar.sha256 for e in dropped)
        if kept:
            self._counters.add("feedback_spooled")
            with self._wake:
                self._wake.notify()
        return kept

    def pending(self) -> int:
        """Images in the spool."""
        return self.spool.depth()

    def close(self, timeout: float) -> int:
        """Upload for up to ``timeout`` s, then stop; returns images left in the spool."""
        with self._wake:
            self._deadline = time.monotonic() + timeout
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout + 0.5)
        with self._wake:
            self._stopped = True
            self._wake.notify()
        left = self.spool.depth()
        if left:
            log.warning(
                "feedback images left in the spool for the next start", extra={"count": left}
            )
        return left

    def _sleep(self, seconds: float, *, wakeable: bool = True) -> bool:
        """Wait ``seconds``; False once it is time to stop.

        ``wakeable``: a new frame (``submit``) ends the wait early. A backoff is not
        wakeable, so a store outage is retried at the backoff's pace, not the
        camera's; ``close`` still shortens it to its drain deadline.
        """
        end = time.monotonic() + seconds
        with self._wake:
            while not self._over():
                limit = end if self._deadline is None else min(end, self._deadline)
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    break
                if self._wake.wait(remaining) and wakeable:
                    break
            return not self._over()

    def _over(self) -> bool:
        if self._stopped:
            return True
        if self._deadline is None:
            return False
        return time.monotonic() >= self._deadline or self.spool.depth() == 0

    def _work(self) -> None:
        while not self._over():
            entry = self.spool.next()
            if entry is None:
                if not self._sleep(1.0):
                    return
                continue
            delay = self._upload(entry)
            if delay and not self._sleep(delay, wakeable=False):
                return

    def _upload(self, entry: SpoolEntry) -> float:
        """Upload one entry; the backoff delay after a failure, else 0."""
        try:
            data, sidecar = self.spool.read(entry)
        except (QcloopError, OSError) as exc:
            self._counters.add("errors")
            self.spool.quarantine(entry, str(exc))
            return 0.0
        try:
            put_raw_image(self._store.get(), data, sidecar)
        except Exception as exc:  # any store failure: keep the entry, back off, inspection goes on
            self._counters.add("upload_failures")
            self._store.reset()
            delay = self._backoff.failed()
            log.error(
                "feedback upload failed, retrying",
                extra={"key": sidecar.key, "retry_in_s": delay, "error": str(exc)},
            )
            return delay
        self.spool.remove(entry)
        self._backoff.reset()
        self._counters.add("feedback_images")
        log.info("feedback image uploaded", extra={"key": sidecar.key})
        return 0.0

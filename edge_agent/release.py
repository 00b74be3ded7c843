"""From a release message to a loaded, verified model, off the inspection thread.

``ModelLoader`` takes raw release payloads (from MQTT), validates them, downloads
the ONNX into ``model_dir``, checks size and sha256, loads a new ``Detector``
and smoke-tests it. Only then is it offered to the loop (``take_ready``), which
swaps between two frames. Anything wrong is logged and counted, and the model
being served stays.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edge_agent.config import EdgeConfig
from edge_agent.inference import Detector
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from qcloop.contracts import ModelRef, ReleaseMessage, Thresholds
from qcloop.errors import ContractError, IntegrityError, QcloopError, StoreError
from qcloop.storage import download_url, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

DOWNLOAD_RETRY_S = 30.0  # a release whose download failed is tried again after this


@dataclass(frozen=True)
class ServingModel:
    """A model ready to serve: its detector, name/version, thresholds and file."""

    detector: Detector
    ref: ModelRef
    thresholds: Thresholds
    sha256: str
    path: Path


def release_thresholds(defaults: Thresholds, release: ReleaseMessage) -> Thresholds:
    """The config's thresholds, overridden by those the release sets."""
    if "thresholds" not in release.model_fields_set:
        return defaults
    given = release.thresholds
    return defaults.model_copy(update={k: getattr(given, k) for k in given.model_fields_set})


def model_filename(release: ReleaseMessage) -> str:
    """``<name>-<version>-<sha12>.onnx``, safe as a file name."""
    ref = release.model
    name, version = (re.sub(r"[^A-Za-z0-9_.-]", "_", v) for v in (ref.name, ref.version))
    return f"{name}-{version}-{release.sha256[:12]}.onnx"


def verify_file(path: Path, size: int, sha256: str) -> None:
    """``IntegrityError`` unless ``path`` has exactly this size and sha256."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise IntegrityError(f"{path.name}: {actual_size} bytes, the release says {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(f"{path.name}: sha256 {actual}, the release says {sha256}")


def fetch_model(release: ReleaseMessage, model_dir: Path, store: LazyStore) -> Path:
    """Download (unless already there and intact) and verify; the verified path."""
    final = model_dir / model_filename(release)
    if final.is_file():
        try:
            verify_file(final, release.size, release.sha256)
            return final
        except IntegrityError:
            final.unlink()
    incoming = model_dir / "incoming" / final.name
    needs_store = urlparse(release.url).scheme == "s3"
    download_url(release.url, incoming, store.get() if needs_store else None)
    try:
        verify_file(incoming, release.size, release.sha256)
    except IntegrityError:
        incoming.unlink(missing_ok=True)
        raise
    os.replace(incoming, final)
    return final


def load_release(release: ReleaseMessage, config: EdgeConfig, store: LazyStore) -> ServingModel:
    """Fetch, verify, load and smoke-test the released model."""
    path = fetch_model(release, config.model_dir, store)
    thresholds = release_thresholds(config.thresholds, release)
    detector = Detector(
        path,
        class_names=release.class_names,
        imgsz=release.input_size,
        confidence=thresholds.confidence,
        iou=thresholds.iou,
        threads=config.ort_threads,
    )
    detector.warmup()
    return ServingModel(detector, release.model, thresholds, release.sha256, path)


def load_local(path: Path, config: EdgeConfig) -> ServingModel:
    """A model given on the command line (``--model``): served as ``<stem>/local``."""
    detector = Detector(
        path,
        confidence=config.thresholds.confidence,
        iou=config.thresholds.iou,
        threads=config.ort_threads,
    )
    detector.warmup()
    ref = ModelRef(name=path.stem, version="local")
    return ServingModel(detector, ref, config.thresholds, sha256_file(path), path)


def prune_models(model_dir: Path, keep: set[Path]) -> None:
    """Delete downloaded models other than ``keep`` (the current and the previous one)."""
    for path in model_dir.glob("*.onnx"):
        if path.resolve() not in {k.resolve() for k in keep}:
            path.unlink(missing_ok=True)


class ModelLoader:
    """Background thread turning release payloads into ``ServingModel``s."""

    def __init__(self, config: EdgeConfig, store: LazyStore, counters: Counters) -> None:
        self._config = config
        self._store = store
        self._counters = counters
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ready: ServingModel | None = None
        self._ready_event = threading.Event()
        self._current: tuple[ModelRef, str] | None = None
        self._refused: set[str] = set()  # sha256 of payloads refused for good
        self._thread = threading.Thread(target=self._work, name="qcloop-loader", daemon=True)

    def start(self) -> None:
        """Start the worker."""
        self._thread.start()

    def submit(self, payload: bytes) -> None:
        """A release payload arrived (called from the MQTT thread: returns at once)."""
        self._inbox.put(payload)

    def serving(self, model: ServingModel) -> None:
        """The loop now serves ``model``: the same release again is not reloaded."""
        with self._lock:
            self._current = (model.ref, model.sha256)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until a model is ready to swap in."""
        return self._ready_event.wait(timeout)

    def take_ready(self) -> ServingModel | None:
        """The newest loaded model not yet swapped in, if any."""
        with self._lock:
            ready, self._ready = self._ready, None
            self._ready_event.clear()
            return ready

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the release being loaded, if any."""
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        while (payload := self._inbox.get()) is not None:
            try:
                self._handle(payload)
            except Exception:  # a bug must not kill the loader: log it and go on
                log.exception("release handling failed")
                self._counters.add("errors")

    def _handle(self, payload: bytes) -> None:
        digest = sha256_bytes(payload)
        with self._lock:
            if digest in self._refused:  # the same payload again (a reconnect): no new download
                return None
        try:
            release = ReleaseMessage.from_json(payload, source="release message")
        except QcloopError as exc:
            return self._refuse(digest, "invalid release ignored, keeping the current model", exc)
        with self._lock:
            if self._current == (release.model, release.sha256):
                return None
        if release.fleet != self._config.fleet:
            error = ContractError(f"release is for fleet '{release.fleet}'")
            return self._refuse(digest, "release for another fleet ignored", error)
        log.info("release received", extra=_describe(release))
        try:
            model = load_release(release, self._config, self._store)
        except StoreError as exc:  # maybe transient: try again later
            self._refuse(None, "release download failed, keeping the current model", exc)
            self._retry_later(payload)
            return None
        except QcloopError as exc:
            return self._refuse(digest, "release refused, keeping the current model", exc)
        with self._lock:
            self._ready = model
            self._ready_event.set()
        log.info("model loaded and smoke-tested", extra=_describe(release))
        return None

    def _refuse(self, digest: str | None, message: str, exc: Exception) -> None:
        log.error(message, extra={"error_type": type(exc).__name__, "error": str(exc)})
        self._counters.add("errors")
        if digest is not None:
            with self._lock:
                self._refused.add(digest)

    def _retry_later(self, payload: bytes) -> None:
        timer = threading.Timer(DOWNLOAD_RETRY_S, self.submit, args=(payload,))
        timer.daemon = True
        timer.start()


def _describe(release: ReleaseMessage) -> dict[str, str]:
    return {"model": release.model.name, "version": release.model.version, "url": release.url}

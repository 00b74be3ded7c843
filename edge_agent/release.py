"""From a release message to a loaded, verified model, off the inspection thread.

``ModelLoader`` takes raw release payloads from two topics: the fleet's and this
device's own (``qcloop/devices/<id>/release``), which wins while a message is
retained there (an empty retained message removes it, and the fleet's release
applies again if it is not older than the override). A payload is refused -
logged, counted, the served model stays - when it is too large, or fails the
``ReleaseGate`` (``edge_agent.trust``: signature, fleet, expiry, sequence), or
when its model was rejected on this device (``edge_agent.rejected``, by sha256), or
does not download within its signed size, verify (sha256), load or pass the smoke
test. Only a model that passed all of this is offered to the loop (``take_ready``),
which swaps it in between two frames, on trial (``edge_agent.trial``).

The download itself, and the random wait before it that keeps a fleet from fetching a
release all at once, are ``edge_agent.fetch``'s; a failed one is retried with ``Backoff``.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import EdgeConfig
from edge_agent.fetch import download_delay, download_retries, fetch_model, verify_file
from edge_agent.history import read_history
from edge_agent.inference import Detector
from edge_agent.link import ReleaseOrigin
from edge_agent.rejected import RejectedModels
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from edge_agent.trust import ReleaseGate
from qcloop.contracts import ModelRef, ReleaseEnvelope, ReleaseMessage, Thresholds
from qcloop.errors import ContractError, IntegrityError, QcloopError, StoreError
from qcloop.signing import SealedRelease
from qcloop.storage import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

_RECHECK = "recheck"

__all__ = [
    "ModelLoader",
    "ModelOnDisk",
    "ServingModel",
    "load_last_good",
    "load_local",
    "load_release",
]


@dataclass(frozen=True)
class ServingModel:
    """A model ready to serve: its detector, name/version, thresholds, file and release
    (with the signed envelope it came in, kept in ``last-good.json``)."""

    detector: Detector
    ref: ModelRef
    thresholds: Thresholds
    sha256: str
    path: Path
    release: ReleaseMessage | None = None
    envelope: ReleaseEnvelope | None = None


@dataclass(frozen=True)
class ModelOnDisk:
    """A model kept to roll back to: its verified file, not its loaded session (~65 MB)."""

    ref: ModelRef
    sha256: str
    path: Path
    release: ReleaseMessage | None = None
    envelope: ReleaseEnvelope | None = None

    @classmethod
    def of(cls, model: ServingModel) -> ModelOnDisk:
        return cls(model.ref, model.sha256, model.path, model.release, model.envelope)

    def reopen(self, config: EdgeConfig) -> ServingModel:
        """Verify the file again, load and smoke-test it (``QcloopError`` if any fails)."""
        if self.release is not None:
            verify_file(self.path, self.release.size, self.release.sha256)
            return open_model(self.release, self.path, config, self.envelope)
        if not self.path.is_file() or sha256_file(self.path) != self.sha256:
            raise IntegrityError(f"{self.path}: gone or changed since it was served")
        return load_local(self.path, config)


def release_thresholds(defaults: Thresholds, release: ReleaseMessage) -> Thresholds:
    """The config's thresholds, overridden by those the release sets (a release from the
    bridge sets them all: those the evaluation scored the model with)."""
    if "thresholds" not in release.model_fields_set:
        return defaults
    given = release.thresholds
    return defaults.model_copy(update={k: getattr(given, k) for k in given.model_fields_set})


def rect_letterbox(thresholds: Thresholds, config: EdgeConfig) -> bool:
    """Whether a dynamic-input model gets each frame on the rect canvas: as ``thresholds``
    (the release's, else the config's) say, else as the device's ``rect_input``."""
    if thresholds.letterbox is None:
        return config.rect_input
    return thresholds.letterbox == "rect"


def open_model(
    release: ReleaseMessage,
    path: Path,
    config: EdgeConfig,
    envelope: ReleaseEnvelope | None = None,
) -> ServingModel:
    """Load the verified file of ``release`` and smoke-test it (``ModelError`` if it fails)."""
    thresholds = release_thresholds(config.thresholds, release)
    detector = Detector(
        path,
        class_names=release.class_names,
        imgsz=release.input_size,
        confidence=thresholds.confidence,
        iou=thresholds.iou,
        threads=config.ort_threads,
        rect=rect_letterbox(thresholds, config),
    )
    detector.warmup()
    ref, sha256 = release.model, release.sha256
    return ServingModel(detector, ref, thresholds, sha256, path, release, envelope)


def load_release(sealed: SealedRelease, config: EdgeConfig, store: LazyStore) -> ServingModel:
    """Fetch, verify, load and smoke-test the released model; a file that fails is deleted."""
    path = fetch_model(sealed.message, config.model_dir, store)
    try:
        return open_model(sealed.message, path, config, sealed.envelope)
    except QcloopError:
        path.unlink(missing_ok=True)
        raise


def load_local(path: Path, config: EdgeConfig) -> ServingModel:
    """A model given on the command line (``--model``): served as ``<stem>/local``."""
    detector = Detector(
        path,
        confidence=config.thresholds.confidence,
        iou=config.thresholds.iou,
        threads=config.ort_threads,
        rect=rect_letterbox(config.thresholds, config),
    )
    detector.warmup()
    ref = ModelRef(name=path.stem, version="local")
    return ServingModel(detector, ref, config.thresholds, sha256_file(path), path)


def load_last_good(
    config: EdgeConfig,
    gate: ReleaseGate,
    counters: Counters,
    rejected: RejectedModels | None = None,
) -> ServingModel | None:
    """The newest good model on disk, not ``rejected``, whose release still verifies with
    today's keys and whose file still verifies and loads, if any."""
    for entry in read_history(config.model_dir):
        path = config.model_dir / entry.file
        try:
            sealed = gate.verify_stored(entry.envelope, source=f"last good {entry.file}")
            release = sealed.message
            if rejected is not None and (bad := rejected.get(release.sha256)) is not None:
                raise IntegrityError(f"rejected {bad.describe()}")
            verify_file(path, release.size, release.sha256)
            model = open_model(release, path, config, entry.envelope)
        except (QcloopError, OSError) as exc:
            log.error("last good model unusable, trying an older one", extra=_failed(entry, exc))
            counters.add("errors")
            continue
        log.info("starting with the last good model", extra=_describe(release))
        return model
    return None


class ModelLoader:
    """Background thread turning release payloads into ``ServingModel``s."""

    def __init__(
        self,
        config: EdgeConfig,
        store: LazyStore,
        counters: Counters,
        gate: ReleaseGate | None = None,
        rejected: RejectedModels | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._counters = counters
        self._gate = gate if gate is not None else ReleaseGate(config)
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ready: ServingModel | None = None
        self._ready_event = threading.Event()
        self._waited: set[str] = set()  # releases whose random wait is drawn (not again)
        self._retries = download_retries(config)
        self._current: tuple[ModelRef, str] | None = None
        self._latest: dict[str, bytes | None] = {"fleet": None, "device": None}
        self._refused: set[str] = set()  # sha256 of payloads refused for good
        self.last_error: str | None = None  # why the last release was refused (heartbeat)
        self._rejected = rejected if rejected is not None else RejectedModels(config.state_dir)
        self._thread = threading.Thread(target=self._work, name="qcloop-loader", daemon=True)

    def start(self) -> None:
        """Start the worker."""
        self._thread.start()

    def submit(self, payload: bytes, origin: ReleaseOrigin = "fleet") -> None:
        """A release payload arrived (called from the MQTT thread: returns at once)."""
        self._inbox.put((origin, payload))

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
        while (item := self._inbox.get()) is not None:
            origin, payload = item
            try:
                if origin != _RECHECK:
                    self._latest[origin] = payload or None  # empty retained = removed
                self._handle()
            except Exception:  # a bug must not kill the loader: log it and go on
                log.exception("release handling failed")
                self.last_error = "release handling failed"
                self._counters.add("errors")

    def _effective(self) -> tuple[str, bytes] | None:
        for origin in ("device", "fleet"):  # a device's own release wins while present
            payload = self._latest[origin]
            if payload is not None:
                return origin, payload
        return None

    def _handle(self) -> None:
        chosen = self._effective()
        if chosen is None:
            return None
        origin, payload = chosen
        digest = sha256_bytes(payload)
        with self._lock:
            if digest in self._refused:  # the same payload again (a reconnect): no new download
                return None
        limit = self._config.release.max_payload_bytes
        if len(payload) > limit:
            error = ContractError(f"{origin} release payload of {len(payload)} bytes > {limit}")
            return self._refuse(digest, "oversized release ignored", error)
        try:
            sealed = self._gate.admit(payload, origin)
        except ContractError as exc:
            return self._refuse(digest, "invalid release ignored, keeping the current model", exc)
        except QcloopError as exc:  # signature, expiry, sequence
            return self._refuse(digest, "untrusted release refused, keeping the model", exc)
        try:
            self._gate.accept(sealed)
        except OSError as exc:  # not recorded, not installed: tried again later
            self._refuse(None, "cannot record the release sequence, keeping the model", exc)
            self._retry_later()
            return None
        release = sealed.message
        with self._lock:
            if self._current == (release.model, release.sha256):
                return None
        rejected = self._rejected.get(release.sha256)  # failed, or took the agent down
        if rejected is not None:
            failed = IntegrityError(f"rejected on this device: {rejected.describe()}")
            return self._refuse(
                digest, "release of a rejected model refused, keeping the current model", failed
            )
        return self._install(sealed, digest, origin)

    def _install(self, sealed: SealedRelease, digest: str, origin: str) -> None:
        release = sealed.message
        extra = {**_describe(release), "origin": origin, "sequence": release.sequence}
        log.info("release received", extra=extra)
        with self._lock:
            serving = self._current is not None
        delay = (
            0.0
            if digest in self._waited
            else download_delay(release, self._config, serving=serving)
        )
        self._waited.add(digest)
        if delay > 0:  # the current model serves meanwhile; a newer release may come first
            log.info("release download after a random wait of %.1f s", delay, extra=extra)
            self._recheck_after(delay)
            return None
        try:
            model = load_release(sealed, self._config, self._store)
        except StoreError as exc:  # maybe transient: try again later
            self._refuse(None, "release download failed, keeping the current model", exc)
            self._retry_later()
            return None
        except QcloopError as exc:
            return self._refuse(digest, "release refused, keeping the current model", exc)
        self._retries.reset()
        with self._lock:
            self._ready = model
            self._ready_event.set()
        log.info("model loaded and smoke-tested", extra=_describe(release))
        return None

    def _refuse(self, digest: str | None, message: str, exc: Exception) -> None:
        log.error(message, extra={"error_type": type(exc).__name__, "error": str(exc)})
        self.last_error = f"{message}: {exc}"
        self._counters.add("errors")
        if digest is not None:  # refused for good (a failed download is retried instead)
            self._counters.add("releases_refused")
            with self._lock:
                self._refused.add(digest)

    def _retry_later(self) -> None:
        delay = self._retries.failed_jittered()
        log.info("release tried again later", extra={"retry_in_s": round(delay, 1)})
        self._recheck_after(delay)

    def _recheck_after(self, delay: float) -> None:
        """The newest release is looked at again in ``delay`` s, on the loader's thread."""
        timer = threading.Timer(delay, self._inbox.put, ((_RECHECK, b""),))
        timer.daemon = True
        timer.start()


def _describe(release: ReleaseMessage) -> dict[str, str]:
    ref, variant = release.model, release.variant
    return {"model": ref.name, "version": ref.version, "variant": variant, "url": release.url}


def _failed(entry: object, exc: Exception) -> dict[str, str]:
    return {"entry": str(getattr(entry, "file", entry)), "error": f"{type(exc).__name__}: {exc}"}

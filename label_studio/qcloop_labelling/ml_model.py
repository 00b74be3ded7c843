"""The model the ML backend serves: the one in production, swapped when the release moves.

The release bridge keeps the last release in the store (``models/<name>/released.json``,
its signed envelope). The backend reads those bytes again every
``label_studio.ml_backend.refresh_s`` seconds; only when they changed does it verify them
(``assist.read_released``) and, for another ONNX, download and load it
(``assist.load_model``: capped at its signed size, sha256 checked). A release that fails
to verify or to load is logged and the model served so far stays; a release that is gone
leaves nothing to serve.
"""

from __future__ import annotations

import logging
import threading

from qcloop.contracts import ReleaseMessage
from qcloop.errors import ObjectNotFound, StoreError
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, released_key
from qcloop_labelling.assist import ReleasedModel, load_model, read_released
from qcloop_labelling.tasks import version_name

log = logging.getLogger(__name__)


class ProductionModel:
    """The released model, swapped when its envelope in the store changes; thread-safe."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self._settings = settings
        self._store = store
        self._key = released_key(settings.mlflow.model_name)
        self._lock = threading.Lock()
        self._payload: bytes | None = None
        self._model: ReleasedModel | None = None

    @property
    def served(self) -> ReleasedModel | None:
        """The model served now (no look at the store)."""
        return self._model

    def refresh(self) -> ReleasedModel | None:
        """Read the envelope; verify and load what changed; the model served from now on."""
        with self._lock:
            self._refresh()
            return self._model

    def close(self) -> None:
        """Drop the model and its downloaded file."""
        with self._lock:
            self._swap(None, None)

    def _refresh(self) -> None:
        try:
            payload = self._store.get_bytes(self._key)
        except ObjectNotFound:
            if self._payload != b"":  # said once, when it becomes true
                log.warning(
                    "nothing released at %s: predictions stay empty until one is", self._key
                )
            self._swap(None, b"")
            return
        except StoreError as exc:  # unreachable for a moment: keep what is served
            log.warning("cannot read %s (%s); %s", self._key, exc, self._keeping())
            return
        if payload == self._payload:
            return
        try:
            model = self._load(read_released(self._settings, payload))
        except StoreError as exc:  # the model's download failed: try again at the next look
            log.warning(
                "cannot download the release of %s (%s); %s", self._key, exc, self._keeping()
            )
            return
        except Exception as exc:  # a bad release must not take the server down
            self._payload = payload  # refused once, not at every look
            log.error("release at %s refused: %s; %s", self._key, exc, self._keeping())
            return
        self._swap(model, payload)
        log.info(
            "serving %s (sha256 %s, input %d px, conf >= %s)",
            version_name(model.ref),
            model.release.sha256[:12],
            model.release.input_size,
            self._settings.label_studio.assist_conf,
        )

    def _load(self, release: ReleaseMessage) -> ReleasedModel:
        """The release's model: the one served when only the envelope changed (re-signed,
        re-published), else downloaded and loaded."""
        if self._model is not None and self._model.release.sha256 == release.sha256:
            return ReleasedModel(release, self._model.detect, self._model.close)
        return load_model(release, self._store, self._settings.label_studio.assist_conf)

    def _swap(self, model: ReleasedModel | None, payload: bytes | None) -> None:
        old, self._model, self._payload = self._model, model, payload
        if old is not None and (model is None or old.close is not model.close):
            old.close()

    def _keeping(self) -> str:
        model = self._model
        return f"still serving {version_name(model.ref)}" if model else "nothing served"

"""Model-assisted labelling: pre-annotate images that no model has seen yet.

Edge feedback arrives with the device's predictions; imported or manually
added images arrive with none. For those, the model in production (the last
release the bridge published, kept in the object store as its signed envelope)
predicts boxes, so labellers correct rather than draw from scratch. With a key
configured (``release.public_keys``, or the bridge's own ``release.signing_key``)
the envelope must verify; the model's download is capped at its signed size.
The ML backend (``qcloop_labelling.ml_backend``) serves the same model to Label Studio.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from qcloop.contracts import Detection, ModelRef, RawImageSidecar, ReleaseMessage
from qcloop.download import download_url
from qcloop.errors import ContractError, IntegrityError, ObjectNotFound
from qcloop.settings import Settings
from qcloop.signing import key_id, load_private_key, load_public_keys, open_envelope
from qcloop.storage import ObjectStore, open_store, released_key
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)

Assistant = Callable[[RawImageSidecar, bytes], RawImageSidecar]


@dataclass(frozen=True)
class ReleasedModel:
    """A released model, loaded: its release, a detector of image bytes, its clean-up."""

    release: ReleaseMessage
    detect: Callable[[bytes], list[Detection]]
    close: Callable[[], None]

    @property
    def ref(self) -> ModelRef:
        """The registered model version it is."""
        return self.release.model


def load_model(release: ReleaseMessage, store: ObjectStore, conf: float) -> ReleasedModel:
    """Download the release's ONNX (capped at its signed size, sha256 checked) and load it.

    ``IntegrityError`` when the bytes are not the ones the release names. The model runs
    once on a blank image here, so a broken file fails now; ``detect`` is thread-safe.
    """
    tmp = Path(tempfile.mkdtemp(prefix="qcloop-assist-"))
    try:
        model_file = download_url(
            release.url, tmp / "model.onnx", store, size=release.size, sha256=release.sha256
        )
        configure_offline()  # no hub, no downloads; its log lines to stderr, not stdout
        from ultralytics import YOLO

        model = YOLO(str(model_file), task="detect")
        size = release.input_size
        model.predict(Image.new("RGB", (size, size)), imgsz=size, verbose=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    lock = threading.Lock()  # one ultralytics predictor: one image at a time

    def detect(data: bytes) -> list[Detection]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        with lock:
            boxes = model.predict(image, imgsz=size, conf=conf, verbose=False)[0].boxes
        return [
            Detection(label=release.class_names[int(c)], score=round(float(s), 4), box=tuple(b))
            for b, s, c in zip(
                boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
            )
        ]

    return ReleasedModel(release, detect, lambda: shutil.rmtree(tmp, ignore_errors=True))


def production_assistant(
    settings: Settings, store: ObjectStore | None = None, progress: Callable[[str], None] = log.info
) -> tuple[Assistant, Callable[[], None]] | None:
    """A predictor with the released model, and its clean-up; None if nothing is released."""
    store = store or open_store(settings.store)
    name = settings.mlflow.model_name
    try:
        release = read_released(settings, store.get_bytes(released_key(name)))
    except ObjectNotFound:
        progress(f"no released {name} yet: images without predictions get no pre-annotation")
        return None
    except (IntegrityError, ContractError) as exc:  # not the bridge's, or not an envelope
        progress(f"{exc}; no model-assisted labelling")
        return None
    conf = settings.label_studio.assist_conf
    try:
        model = load_model(release, store, conf)
    except IntegrityError as exc:
        progress(f"{exc}; no model-assisted labelling")
        return None
    ref = model.ref
    progress(f"model-assisted labelling with {ref.name} v{ref.version} (conf >= {conf})")

    def predict(sidecar: RawImageSidecar, data: bytes) -> RawImageSidecar:
        return sidecar.model_copy(update={"model": ref, "predictions": model.detect(data)})

    return predict, model.close


def read_released(settings: Settings, payload: bytes) -> ReleaseMessage:
    """The release in the bridge's envelope, verified when a key is configured
    (``release.public_keys``, or the public half of ``release.signing_key``)."""
    keys = load_public_keys(settings.release.public_keys)
    if settings.release.signing_key is not None:
        public = load_private_key(settings.release.signing_key).public_key()
        keys[key_id(public)] = public
    sealed = open_envelope(payload, keys, allow_unsigned=not keys, source="released model")
    return sealed.message

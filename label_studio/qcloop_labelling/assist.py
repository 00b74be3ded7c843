"""Model-assisted labelling: pre-annotate images that no model has seen yet.

Edge feedback arrives with the device's predictions; imported or manually
added images arrive with none. For those, the model in production (the last
release the bridge published, kept in the object store as its signed envelope)
predicts boxes, so labellers correct rather than draw from scratch. With a key
configured (``release.public_keys``, or the bridge's own ``release.signing_key``)
the envelope must verify; the model's download is capped at its signed size.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from qcloop.contracts import Detection, ModelRef, RawImageSidecar, ReleaseMessage
from qcloop.download import download_url
from qcloop.errors import ContractError, IntegrityError, ObjectNotFound
from qcloop.settings import Settings
from qcloop.signing import key_id, load_private_key, load_public_keys, open_envelope
from qcloop.storage import ObjectStore, open_store, released_key

log = logging.getLogger(__name__)

Assistant = Callable[[RawImageSidecar, bytes], RawImageSidecar]


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
    tmp = Path(tempfile.mkdtemp(prefix="qcloop-assist-"))
    try:
        model_file = download_url(
            release.url, tmp / "model.onnx", store, size=release.size, sha256=release.sha256
        )
    except IntegrityError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        progress(f"{exc}; no model-assisted labelling")
        return None
    from ultralytics import YOLO

    model = YOLO(str(model_file), task="detect")
    ref = ModelRef(name=release.model.name, version=release.model.version)
    conf = settings.label_studio.assist_conf
    progress(f"model-assisted labelling with {ref.name} v{ref.version} (conf >= {conf})")

    def predict(sidecar: RawImageSidecar, data: bytes) -> RawImageSidecar:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        boxes = model.predict(image, imgsz=release.input_size, conf=conf, verbose=False)[0].boxes
        detections = [
            Detection(label=release.class_names[int(c)], score=round(float(s), 4), box=tuple(b))
            for b, s, c in zip(
                boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
            )
        ]
        return sidecar.model_copy(update={"model": ref, "predictions": detections})

    return predict, lambda: shutil.rmtree(tmp, ignore_errors=True)


def read_released(settings: Settings, payload: bytes) -> ReleaseMessage:
    """The release in the bridge's envelope, verified when a key is configured
    (``release.public_keys``, or the public half of ``release.signing_key``)."""
    keys = load_public_keys(settings.release.public_keys)
    if settings.release.signing_key is not None:
        public = load_private_key(settings.release.signing_key).public_key()
        keys[key_id(public)] = public
    sealed = open_envelope(payload, keys, allow_unsigned=not keys, source="released model")
    return sealed.message

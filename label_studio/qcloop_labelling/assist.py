"""Model-assisted labelling: pre-annotate images that no model has seen yet.

Edge feedback arrives with the device's predictions; imported or manually
added images arrive with none. For those, the model in production (the last
release the bridge published, kept in the object store) predicts boxes, so
labellers correct rather than draw from scratch.
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
from qcloop.errors import ObjectNotFound
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, download_url, open_store, released_key, sha256_file

log = logging.getLogger(__name__)

Assistant = Callable[[RawImageSidecar, bytes], RawImageSidecar]


def production_assistant(
    settings: Settings, store: ObjectStore | None = None, progress: Callable[[str], None] = log.info
) -> tuple[Assistant, Callable[[], None]] | None:
    """A predictor with the released model, and its clean-up; None if nothing is released."""
    store = store or open_store(settings.store)
    name = settings.mlflow.model_name
    try:
        release = ReleaseMessage.from_json(store.get_bytes(released_key(name)))
    except ObjectNotFound:
        progress(f"no released {name} yet: images without predictions get no pre-annotation")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="qcloop-assist-"))
    model_file = download_url(release.url, tmp / "model.onnx", store)
    if sha256_file(model_file) != release.sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        progress(f"{release.url}: sha256 differs from the release; no model-assisted labelling")
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

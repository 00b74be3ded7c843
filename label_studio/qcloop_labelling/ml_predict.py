"""Label Studio tasks -> predictions of the served model, the ML backend's ``/predict``.

Where a task's image comes from: the raw store, by the ``raw_key`` and ``sha256`` that
qcloop's tasks carry (in ``data``, and in ``meta``), or a ``data:`` URL inside the task.
Never a URL from the task: an ``http(s)://`` image is not fetched (the backend would
otherwise request whatever address a task names). A task without a usable image gets
no prediction (an empty list in its place, so that Label Studio matches the others to
their tasks) and a log line that names it.
"""

from __future__ import annotations

import binascii
import io
import logging
import re
import xml.etree.ElementTree as ET
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError

from qcloop.errors import StoreError
from qcloop.storage import RAW_PREFIX, ObjectStore, sha256_bytes
from qcloop_labelling.assist import ReleasedModel
from qcloop_labelling.boxes import FROM_NAME, TO_NAME
from qcloop_labelling.tasks import META_KEY, META_SHA, data_url_image, prediction, version_name

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 << 20  # a raw image larger than this is not read
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class LabelTarget(NamedTuple):
    """Where predictions go in a project's labelling config: its rectangle control."""

    from_name: str
    to_name: str
    labels: frozenset[str] | None  # None: not known, every class name goes


QCLOOP_TARGET = LabelTarget(FROM_NAME, TO_NAME, None)


def label_target(label_config: str | None) -> LabelTarget:
    """The first ``RectangleLabels`` of a labelling config; ``ValueError`` if it has none."""
    if not label_config:
        return QCLOOP_TARGET
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise ValueError(f"the project's labelling config is not XML: {exc}") from None
    control = root.find(".//RectangleLabels")
    if control is None or not control.get("name") or not control.get("toName"):
        raise ValueError(
            "the project's labelling config has no <RectangleLabels name=... toName=...>: "
            "the qcloop model predicts boxes (label_studio/labeling_config.xml)"
        )
    labels = frozenset(str(label.get("value")) for label in control.iter("Label"))
    return LabelTarget(str(control.get("name")), str(control.get("toName")), labels)


def task_image(task: dict[str, Any], store: ObjectStore) -> bytes | None:
    """The task's image bytes, checked against its sha256; None (logged) if there is none."""
    data, meta = _part(task, "data"), _part(task, "meta")
    key = data.get("raw_key") or meta.get(META_KEY)
    sha = data.get("sha256") or meta.get(META_SHA)
    image = data.get("image")
    where = f"task {task.get('id')}"
    if sha is not None and not (isinstance(sha, str) and SHA256.match(sha)):
        log.warning("%s: sha256 %s is not a sha256; no prediction", where, repr(sha)[:80])
        return None
    found = _from_store(where, key, store) if key else None
    if found is None and isinstance(image, str) and image.startswith("data:"):
        found = _from_data_url(where, image)
    if found is None:
        if isinstance(image, str) and re.match(r"^[a-z][a-z0-9+.-]*://", image, re.IGNORECASE):
            log.warning(
                "%s: image %s is not read (only the raw store, by data.raw_key, or an inline "
                "data: URL is); no prediction",
                where,
                image.split("://", 1)[0] + "://...",
            )
        elif not key:
            log.warning("%s: no raw_key and no inline data: URL; no prediction", where)
        return None
    if sha is not None and sha256_bytes(found) != sha:
        log.warning("%s: image bytes do not hash to its sha256 %s; no prediction", where, sha)
        return None
    return found


def _part(task: dict[str, Any], name: str) -> dict[str, Any]:
    value = task.get(name)
    return value if isinstance(value, dict) else {}


def _from_store(where: str, key: object, store: ObjectStore) -> bytes | None:
    if not isinstance(key, str) or not key.startswith(RAW_PREFIX):  # the store refuses ".."
        log.warning("%s: raw_key %s is not a key under %s", where, repr(key)[:200], RAW_PREFIX)
        return None
    try:
        data = b"".join(store.stream(key, limit=MAX_IMAGE_BYTES + 1))
    except StoreError as exc:
        log.warning("%s: cannot read %s from the store: %s", where, key, exc)
        return None
    if len(data) > MAX_IMAGE_BYTES:
        log.warning("%s: %s is over %d MiB; not predicted", where, key, MAX_IMAGE_BYTES >> 20)
        return None
    return data


def _from_data_url(where: str, url: str) -> bytes | None:
    try:
        found = data_url_image(url, strict=True)
    except (binascii.Error, ValueError):
        log.warning("%s: data: URL is not valid base64; no prediction", where)
        return None
    if found is None:
        log.warning("%s: data: URL is not a base64 image; no prediction", where)
        return None
    return found[0]


def predict_task(
    task: dict[str, Any], model: ReleasedModel, store: ObjectStore, target: LabelTarget
) -> dict[str, Any] | list[Any]:
    """One task's prediction, or ``[]`` (no prediction) when its image is not usable."""
    data = task_image(task, store)
    if data is None:
        return []
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        detections = model.detect(data)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        log.warning("task %s: image cannot be decoded (%s); no prediction", task.get("id"), exc)
        return []
    except Exception:  # one image must not fail the other tasks of the request
        log.exception("task %s: prediction failed; no prediction", task.get("id"))
        return []
    if target.labels is not None:
        unknown = {d.label for d in detections} - target.labels
        if unknown:
            log.warning(
                "task %s: the project has no label %s; those boxes are left out",
                task.get("id"),
                sorted(unknown),
            )
            detections = [d for d in detections if d.label in target.labels]
    names = (target.from_name, target.to_name)
    return prediction(version_name(model.ref), detections, width, height, names)

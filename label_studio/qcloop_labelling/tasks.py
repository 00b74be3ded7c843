"""Label Studio tasks built from raw images: data, meta, pre-annotations, annotations.

By default images travel inside the task as ``data:`` URLs. Why: it is the one way that works
with any Label Studio deployment and any qcloop store without server-side set-up
(local-files serving needs the server to see our folder plus env vars and a storage
record; cloud storage needs Label Studio to reach MinIO). Cost: a task weighs ~1.35x
its JPEG (~40 KB for a metal tag) in Label Studio's database. With an S3 store,
``label_studio.images = "s3"`` puts ``s3://bucket/raw/...`` in the task instead and
an S3 storage of the project resolves it (``qcloop_labelling.storage``). The raw key and the
sha256 ride along in ``data`` (for people and exports) and in ``meta`` (for the light
"what is already there" query), so an image never becomes two tasks.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from qcloop.contracts import Detection, ModelRef, RawImageSidecar
from qcloop_labelling.boxes import FROM_NAME, TO_NAME, detection_to_result
from qcloop_labelling.client import LabelStudioClient

META_SHA = "qcloop_sha256"
META_KEY = "qcloop_raw_key"
T = TypeVar("T")


def data_url(data: bytes, content_type: str) -> str:
    """The image bytes as a ``data:`` URL the browser shows without another request."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


DATA_URL = re.compile(r"^data:image/([\w.+-]+);base64,(.*)$", re.DOTALL)


def data_url_image(url: str, *, strict: bool = False) -> tuple[bytes, str] | None:
    """``data_url``'s inverse: the image bytes and their type (``jpeg``, ``png``, ...) of a
    base64 ``data:image/...`` URL, None if ``url`` is none. ``strict``: invalid base64
    raises ``binascii.Error`` rather than being decoded as far as it goes."""
    match = DATA_URL.match(url)
    if match is None:
        return None
    return base64.b64decode(match.group(2), validate=strict), match.group(1)


def confidence(sidecar: RawImageSidecar) -> float:
    """How sure the model was about an image: its best score, 0 without predictions."""
    return max((d.score for d in sidecar.predictions), default=0.0)


def model_version(sidecar: RawImageSidecar) -> str:
    """``name:version`` of the model that predicted, or ``unknown``."""
    return version_name(sidecar.model) if sidecar.model else "unknown"


def version_name(model: ModelRef) -> str:
    """How Label Studio knows a model version: ``name:version``."""
    return f"{model.name}:{model.version}"


def prediction(
    version: str,
    detections: list[Detection],
    width: int,
    height: int,
    names: tuple[str, str] = (FROM_NAME, TO_NAME),
) -> dict[str, Any]:
    """A Label Studio prediction: the boxes in percent of the image, the best score;
    ``names``: the labelling config's (from_name, to_name)."""
    return {
        "model_version": version,
        "score": max((d.score for d in detections), default=0.0),
        "result": [detection_to_result(d, width, height, names) for d in detections],
    }


def image_task(sidecar: RawImageSidecar, image: bytes | str) -> dict[str, Any]:
    """A task for one raw image, with the model's predictions as pre-annotation.

    ``image`` is the bytes (sent inline) or a URL Label Studio resolves (``s3://``).
    """
    task: dict[str, Any] = {
        "data": {
            "image": image if isinstance(image, str) else data_url(image, sidecar.content_type),
            "raw_key": sidecar.key,
            "sha256": sidecar.sha256,
            "name": sidecar.original_name or sidecar.key.rsplit("/", 1)[-1],
            "width": sidecar.width,
            "height": sidecar.height,
            "source": sidecar.source,
            "reason": sidecar.reason,
            "captured_at": sidecar.captured_at.isoformat(),
            "confidence": round(confidence(sidecar), 4),
        },
        "meta": {META_SHA: sidecar.sha256, META_KEY: sidecar.key},
    }
    if sidecar.predictions:
        task["predictions"] = [
            prediction(model_version(sidecar), sidecar.predictions, sidecar.width, sidecar.height)
        ]
    return task


def recency(annotation: dict[str, Any]) -> tuple[str, int]:
    """Orders a task's annotations: the one updated last is the greatest (ties: higher id)."""
    return str(annotation.get("updated_at") or ""), int(annotation.get("id") or 0)


def known_images(client: LabelStudioClient, project_id: int) -> set[str]:
    """sha256 of every image that already has a task in the project."""
    return {
        str(t["meta"][META_SHA])
        for t in client.task_metas(project_id)
        if isinstance(t.get("meta"), dict) and t["meta"].get(META_SHA)
    }


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

"""Existing labels -> Label Studio tasks that are already annotated.

Three sources: a YOLO folder (``images/``, ``labels/``, ``classes.txt``), a Label
Studio JSON export (from another server or project) and a COCO detection file.
Images go into the raw store first (content-addressed, so a repeat is free) and
become tasks exactly like sync-in's, with the labels as a submitted annotation;
an image that already has a task is left alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcloop.contracts import RawImageSidecar
from qcloop.errors import DatasetError
from qcloop.settings import Settings
from qcloop.storage import open_store, put_raw_image, raw_key, sha256_bytes
from qcloop.yolo import image_size, scan_yolo_folder
from qcloop_labelling.boxes import result_to_yolo, yolo_to_result
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.sync_out import chosen_annotation
from qcloop_labelling.tasks import batches, image_task, known_images

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImportReport:
    """What an import of existing labels did."""

    source: str
    images: int
    already_in_project: int
    created: int
    boxes: int
    negatives: int


def _raw_image(path: Path, source: str) -> tuple[RawImageSidecar, bytes]:
    data = path.read_bytes()
    digest, ext = sha256_bytes(data), path.suffix.lower().lstrip(".")
    width, height = image_size(path)
    sidecar = RawImageSidecar(
        key=raw_key(digest, ext),
        sha256=digest,
        content_type="image/png" if ext == "png" else "image/jpeg",
        width=width,
        height=height,
        source=source,
        reason="import",
        original_name=path.name,
    )
    return sidecar, data


def _annotated_task(
    sidecar: RawImageSidecar, data: bytes, result: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """A task with ``result`` as its submitted annotation (``None``: no annotation)."""
    task = image_task(sidecar, data)
    if result is not None:
        task["annotations"] = [{"result": result, "was_cancelled": False}]
    return task


def _send(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    source: str,
    items: list[tuple[Path, list[Any] | None]],
    to_result: Callable[[Any, int, int], dict[str, Any]],
    progress: Progress,
    batch_size: int,
) -> ImportReport:
    """Put images in the raw store and create annotated tasks for the new ones."""
    store = open_store(settings.store)
    known = known_images(client, project_id)
    tasks, boxes, negatives, already = [], 0, 0, 0
    for path, labels in items:
        sidecar, data = _raw_image(path, source)
        put_raw_image(store, data, sidecar)
        if sidecar.sha256 in known:
            already += 1
            continue
        known.add(sidecar.sha256)
        result = (
            None
            if labels is None
            else [to_result(b, sidecar.width, sidecar.height) for b in labels]
        )
        tasks.append(_annotated_task(sidecar, data, result))
        boxes += len(labels or [])
        negatives += labels == []
    created = 0
    for batch in batches(tasks, batch_size):
        created += len(client.import_tasks(project_id, batch))
        progress(f"  created {created}/{len(tasks)} annotated tasks")
    return ImportReport(source, len(items), already, created, boxes, negatives)


def import_yolo(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    folder: Path,
    *,
    batch_size: int = 100,
    progress: Progress = log.info,
) -> ImportReport:
    """Import a YOLO folder's images and labels as annotated tasks."""
    names, items = scan_yolo_folder(Path(folder))
    if names != list(settings.class_names):
        raise DatasetError(
            f"{folder}/classes.txt: classes {names} differ from the settings' "
            f"{settings.class_names}; the project labels with the settings' classes"
        )
    progress(f"importing {len(items)} labelled images from {folder}")
    pairs: list[tuple[Path, list[Any] | None]] = [(i.image, list(i.boxes)) for i in items]
    return _send(
        settings,
        client,
        project_id,
        str(folder),
        pairs,
        lambda box, w, h: yolo_to_result(box, names, w, h),
        progress,
        batch_size,
    )


def import_label_studio_json(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    export: Path,
    images_dir: Path,
    *,
    batch_size: int = 100,
    progress: Progress = log.info,
) -> ImportReport:
    """Import a Label Studio JSON export; images are found in ``images_dir`` by file name.

    Its counted annotation (same rule as sync-out) becomes the task's annotation;
    tasks without one are imported without annotation (pending).
    """
    try:
        tasks = json.loads(Path(export).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{export}: not a readable Label Studio JSON export: {exc}") from None
    names, problems = list(settings.class_names), []
    items: list[tuple[Path, list[Any] | None]] = []
    for task in tasks:
        path = _local_image(task, Path(images_dir))
        if path is None:
            ref = str((task.get("data") or {}).get("image") or "")[:80]
            problems.append(f"task {task.get('id')}: image '{ref}' not found in {images_dir}")
            continue
        chosen = chosen_annotation(task)
        results = None if chosen is None else list(chosen.get("result") or [])
        for n, result in enumerate(results or [], start=1):
            try:
                result_to_yolo(result, names)
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"task {task.get('id')} box {n}: {exc}")
        items.append((path, results))
    if problems:
        raise DatasetError(
            f"{export}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:20])
        )
    progress(f"importing {len(items)} tasks from {export}")
    return _send(settings, client, project_id, str(export), items, _rescaled, progress, batch_size)


def _local_image(task: dict[str, Any], images_dir: Path) -> Path | None:
    """The file of a task's image in ``images_dir``, by name.

    Tried in order: ``data.name`` (qcloop's own tasks), the last part of
    ``data.image`` (``s3://``, ``http(s)://``, ``/data/local-files/?d=``), and that
    part without the ``<8 hex>-`` prefix Label Studio gives uploaded files.
    """
    data = task.get("data") or {}
    last = str(data.get("image") or "").split("?d=")[-1].rsplit("/", 1)[-1].split("?")[0]
    names = [str(data.get("name") or ""), last, re.sub(r"^[0-9a-f]{8}-", "", last)]
    for name in names:
        if name and not name.startswith("data:") and (images_dir / name).is_file():
            return images_dir / name
    return None


def _rescaled(result: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """A foreign result with our image size (percent coordinates stay as they are)."""
    out = {k: v for k, v in result.items() if k not in ("id", "origin")}
    return out | {"original_width": width, "original_height": height}


def _coco_result(box: tuple[str, list[float]], width: int, height: int) -> dict[str, Any]:
    """A COCO pixel box ``[x, y, w, h]`` as a Label Studio result (percent)."""
    label, (x, y, w, h) = box
    det = {"x": 100 * x / width, "y": 100 * y / height, "w": 100 * w / width, "h": 100 * h / height}
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": det["x"],
            "y": det["y"],
            "width": det["w"],
            "height": det["h"],
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def import_coco(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    coco_json: Path,
    images_dir: Path,
    *,
    batch_size: int = 100,
    progress: Progress = log.info,
) -> ImportReport:
    """Import a COCO detection file; every listed image is labelled (no box = negative)."""
    try:
        coco = json.loads(Path(coco_json).read_text())
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        images = coco["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{coco_json}: not a readable COCO detection file: {exc}") from None
    names, problems = list(settings.class_names), []
    boxes: dict[int, list[tuple[str, list[float]]]] = {int(i["id"]): [] for i in images}
    for ann in coco.get("annotations", []):
        label = categories.get(int(ann.get("category_id", -1)), "?")
        if label not in names or int(ann.get("image_id", -1)) not in boxes:
            problems.append(f"annotation {ann.get('id')}: category '{label}' or image unknown")
            continue
        boxes[int(ann["image_id"])].append((label, [float(v) for v in ann["bbox"]]))
    items: list[tuple[Path, list[Any] | None]] = []
    for image in images:
        path = Path(images_dir) / Path(str(image["file_name"])).name
        if not path.is_file():
            problems.append(f"image {image['id']}: {path} not found")
            continue
        width, height = image_size(path)
        for n, box in enumerate(boxes[int(image["id"])], start=1):
            try:
                result_to_yolo(_coco_result(box, width, height), names)
            except ValueError as exc:
                problems.append(f"image {image['id']} ({path.name}) box {n}: {exc}")
        items.append((path, boxes[int(image["id"])]))
    if problems:
        shown = "\n  ".join(problems[:20])
        raise DatasetError(f"{coco_json}: {len(problems)} problem(s):\n  {shown}")
    progress(f"importing {len(items)} images from {coco_json}")
    return _send(
        settings, client, project_id, str(coco_json), items, _coco_result, progress, batch_size
    )

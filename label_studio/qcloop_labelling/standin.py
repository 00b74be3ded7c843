"""A stand-in annotator: labels tasks through Label Studio's API from labels it already knows.

The quickstart's later rounds, the loop test and the loop benchmark need people to
label the images the edge sent back. A ``StandInAnnotator`` plays that part: it knows
the true boxes of some images (a YOLO folder's own labels, or the synthetic
generator's), finds each task's image by its content hash, and submits those boxes as
an annotation through the same REST call the labelling web app makes. Tasks of
images it does not know stay pending, as a real labeller's backlog would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcloop.storage import sha256_file
from qcloop.yolo import YoloBox, scan_yolo_folder
from qcloop_labelling.boxes import yolo_to_result
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.tasks import META_SHA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownImage:
    """The truth about one image: its size and boxes."""

    width: int
    height: int
    boxes: tuple[YoloBox, ...]


@dataclass(frozen=True)
class AnnotatorReport:
    """What the annotator did with the tasks it was given."""

    annotator: str
    labelled: int
    negative: int
    unknown: int
    annotation_ids: tuple[int, ...]


class StandInAnnotator:
    """Labels tasks with known boxes, keyed by the sha256 of the image bytes."""

    def __init__(self, name: str, class_names: list[str], known: dict[str, KnownImage]) -> None:
        self.name = name
        self.class_names = class_names
        self.known = known

    def __repr__(self) -> str:
        return f"StandInAnnotator({self.name!r}, {len(self.known)} known images)"

    @classmethod
    def from_yolo_folders(cls, name: str, folders: Iterable[Path]) -> StandInAnnotator:
        """An annotator that knows every image of these YOLO folders (same classes)."""
        known: dict[str, KnownImage] = {}
        names: list[str] | None = None
        for folder in folders:
            found, items = scan_yolo_folder(folder, names)
            names = names or found
            for item in items:
                known[sha256_file(item.image)] = KnownImage(item.width, item.height, item.boxes)
        if names is None:
            raise ValueError(f"stand-in annotator {name!r}: no YOLO folder given")
        return cls(name, names, known)

    def result(self, image: KnownImage) -> list[dict[str, Any]]:
        """The Label Studio result of an image's boxes (empty: no defect)."""
        return [
            yolo_to_result(box, self.class_names, image.width, image.height) for box in image.boxes
        ]

    def label(
        self, client: LabelStudioClient, project_id: int, task_ids: Iterable[int]
    ) -> AnnotatorReport:
        """Annotate the given tasks of the project whose images it knows."""
        wanted = set(task_ids)
        tasks = [t for t in client.task_metas(project_id) if int(t["id"]) in wanted]
        labelled = negative = unknown = 0
        ids: list[int] = []
        for task in sorted(tasks, key=lambda t: int(t["id"])):
            sha = (task.get("meta") or {}).get(META_SHA)
            image = self.known.get(str(sha))
            if image is None:
                unknown += 1
                continue
            ids.append(client.create_annotation(int(task["id"]), self.result(image)))
            if image.boxes:
                labelled += 1
            else:
                negative += 1
        log.info(
            "stand-in annotator %s: %d tasks labelled, %d without defect, %d images unknown",
            self.name,
            labelled,
            negative,
            unknown,
        )
        return AnnotatorReport(self.name, labelled, negative, unknown, tuple(ids))

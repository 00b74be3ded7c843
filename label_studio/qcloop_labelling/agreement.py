"""Agreement between labellers who annotated the same task: box-level F1 at IoU >= 0.5.

A task counts when two or more people (``completed_by``) submitted an annotation of it
(not cancelled; a person's latest annotation of the task stands for them). Every pair of
them is compared: boxes of the same class are matched one to one, greedily by IoU
(highest first), a match needing IoU >= ``IOU_MATCH``; F1 = 2 * matches / (boxes of one
+ boxes of the other), and 1 when neither drew a box (both say: no defect). A task's
figure is the mean over its pairs, the overall figure the mean over tasks. Boxes that
cannot be converted (unknown label, outside the image) are left out here; the round
reports them as invalid. Pure functions on the Label Studio JSON export.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from qcloop.boxes import iou_matrix
from qcloop.yolo import YoloBox
from qcloop_labelling.boxes import result_to_yolo
from qcloop_labelling.tasks import recency

IOU_MATCH = 0.5
LOWEST = 5  # tasks the summary names, least agreement first
AGREEMENT_RULE = (
    "tasks with annotations by two or more people: box-level F1 of each pair of them at "
    f"IoU >= {IOU_MATCH} (same class, one to one, greedy by IoU; no boxes on both = 1), "
    "mean over the pairs of a task, then over tasks"
)


@dataclass(frozen=True)
class PairAgreement:
    """Two annotators of one task (Label Studio user ids) and their box-level F1."""

    a: int
    b: int
    f1: float


@dataclass(frozen=True)
class TaskAgreement:
    """One task annotated by several people: its annotators and their mean F1."""

    task_id: int
    annotators: tuple[int, ...]
    f1: float
    pairs: tuple[PairAgreement, ...]


@dataclass(frozen=True)
class Agreement:
    """Agreement over every task that several people annotated."""

    tasks: tuple[TaskAgreement, ...] = ()

    @property
    def mean_f1(self) -> float | None:
        """Mean of the tasks' F1; None when no task has more than one annotator."""
        return sum(t.f1 for t in self.tasks) / len(self.tasks) if self.tasks else None

    def lowest(self, n: int = LOWEST) -> list[TaskAgreement]:
        """The ``n`` tasks with the least agreement below 1 (ties: lower task id first)."""
        below = [t for t in self.tasks if t.f1 < 1.0]
        return sorted(below, key=lambda t: (t.f1, t.task_id))[:n]

    def summary(self) -> dict[str, Any]:
        """What the commands print: ``{"tasks", "mean_f1", "lowest": [{"task", "f1"}]}``."""
        mean = self.mean_f1
        return {
            "tasks": len(self.tasks),
            "mean_f1": None if mean is None else round(mean, 4),
            "lowest": [
                {"task": t.task_id, "f1": round(t.f1, 4), "annotators": list(t.annotators)}
                for t in self.lowest()
            ],
        }

    def details(self) -> dict[str, Any]:
        """The summary, the rule and every task's pairs (the export report's ``agreement``)."""
        per_task = [
            {
                "task": t.task_id,
                "f1": round(t.f1, 4),
                "pairs": [{"a": p.a, "b": p.b, "f1": round(p.f1, 4)} for p in t.pairs],
            }
            for t in self.tasks
        ]
        return self.summary() | {"rule": AGREEMENT_RULE, "per_task": per_task}


def _xyxy(boxes: list[YoloBox]) -> np.ndarray:
    rows = [(b.cx - b.w / 2, b.cy - b.h / 2, b.cx + b.w / 2, b.cy + b.h / 2) for b in boxes]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def box_f1(a: list[YoloBox], b: list[YoloBox], iou: float = IOU_MATCH) -> float:
    """F1 of two annotators' boxes of one image: same-class one-to-one matches at ``iou``.

    Normalised boxes are compared as they are: IoU does not change when the x and y axes
    are scaled to pixels.
    """
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    overlap = iou_matrix(_xyxy(a), _xyxy(b))
    same_class = np.equal.outer([x.class_id for x in a], [y.class_id for y in b])
    overlap = np.where(same_class, overlap, 0.0)
    rows, cols = np.nonzero(overlap >= iou)
    used_a: set[int] = set()
    used_b: set[int] = set()
    for i, j in sorted(zip(rows, cols, strict=True), key=lambda ij: -overlap[ij]):
        if i not in used_a and j not in used_b:
            used_a.add(int(i))
            used_b.add(int(j))
    return 2 * len(used_a) / (len(a) + len(b))


def _boxes(annotation: dict[str, Any], names: list[str]) -> list[YoloBox]:
    boxes = []
    for result in annotation.get("result") or []:
        try:
            boxes.append(result_to_yolo(result, names))
        except (ValueError, KeyError, TypeError):
            continue  # the round reports it as invalid
    return boxes


def by_annotator(task: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each person's latest submitted (not cancelled) annotation of ``task``, by user id."""
    latest: dict[int, dict[str, Any]] = {}
    for annotation in task.get("annotations") or []:
        who = annotation.get("completed_by")
        who = who.get("id") if isinstance(who, dict) else who
        if annotation.get("was_cancelled") or not isinstance(who, int):
            continue
        held = latest.get(who)
        if held is None or recency(annotation) > recency(held):
            latest[who] = annotation
    return latest


def task_agreement(task: dict[str, Any], names: list[str]) -> TaskAgreement | None:
    """Agreement on one task; None unless two or more people annotated it."""
    people = by_annotator(task)
    if len(people) < 2:
        return None
    boxes = {who: _boxes(annotation, names) for who, annotation in people.items()}
    pairs = tuple(
        PairAgreement(a, b, box_f1(boxes[a], boxes[b])) for a, b in combinations(sorted(boxes), 2)
    )
    f1 = sum(p.f1 for p in pairs) / len(pairs)
    return TaskAgreement(int(task["id"]), tuple(sorted(boxes)), f1, pairs)


def agreement(tasks: list[dict[str, Any]], names: list[str]) -> Agreement:
    """Agreement over every task of an export that several people annotated (by task id)."""
    found = (task_agreement(t, names) for t in sorted(tasks, key=lambda t: int(t["id"])))
    return Agreement(tuple(t for t in found if t is not None))

"""Label Studio -> YOLO folder: export JSON, convert it ourselves, count every task.

Label Studio's own YOLO export drops images without boxes (our negatives), drops
``s3://`` tasks and renames files by hash, so the JSON export is converted here.

Which annotation counts (``ANNOTATION_RULE``, also written to the output):
only submitted (not cancelled) annotations count; with several, the one updated
last wins (ties: the higher annotation id). A task whose annotations were all
cancelled is *skipped*; one with none is *pending*; a counted annotation without
boxes is a *negative*; with boxes it is *labelled*.

With review on (``label_studio.review``), only reviewed annotations count: starred as
ground truth or accepted (Label Studio Enterprise) by one of ``label_studio.reviewers``,
or a reviewer's own (``qcloop_labelling.review`` says how a labeller's own star is told
apart). Submitted but not yet reviewed work stays *pending* for the next round.

Tasks that several people annotated also give agreement figures (box-level F1 at IoU
0.5, ``qcloop_labelling.agreement``) in the report; they change nothing exported.

A counted annotation with a bad box (outside the image, no area, rotated, unknown
class) or a task whose image is unusable is *invalid*: by default it is reported (task,
annotation, box, reason) and left out, so every valid task still makes the round;
with ``label_studio.strict`` one invalid task stops the export before anything is
written (``AnnotationError`` naming every bad task).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from qcloop.contracts import utcnow
from qcloop.errors import ObjectNotFound
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, open_store
from qcloop.yolo import YoloBox, listed
from qcloop_labelling.agreement import Agreement, agreement
from qcloop_labelling.boxes import result_to_yolo
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.errors import AnnotationError, LabellingError
from qcloop_labelling.review import (
    OPEN_REVIEW_WARNING,
    REVIEW_RULE,
    Reviewers,
    resolve_reviewers,
    reviewed,
)
from qcloop_labelling.tasks import data_url_image, recency

log = logging.getLogger(__name__)

Status = Literal["labelled", "negative", "skipped", "pending", "invalid"]
STATUSES: tuple[Status, ...] = ("labelled", "negative", "skipped", "pending", "invalid")
REPORT_FILE = "labelling-export.json"
ANNOTATION_RULE = (
    "only submitted, not cancelled annotations count; with several on one task, the one "
    "updated last wins (ties: higher annotation id); all cancelled = skipped; none = pending; "
    "a counted annotation without boxes = negative"
)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Problem:
    """Why a task cannot be exported: its task, annotation, box (1-based) and the reason."""

    task_id: int
    annotation_id: int | None
    box: int | None
    reason: str

    def line(self) -> str:
        """``task 42 (annotation 97, box 1): reason``, as the messages say it."""
        where = [f"annotation {self.annotation_id}"] if self.annotation_id is not None else []
        where += [f"box {self.box}"] if self.box is not None else []
        inside = f" ({', '.join(where)})" if where else ""
        return f"task {self.task_id}{inside}: {self.reason}"


@dataclass(frozen=True)
class TaskOutcome:
    """What one task becomes in the YOLO folder."""

    task_id: int
    status: Status
    annotation_id: int | None = None
    raw_key: str | None = None
    name: str | None = None
    boxes: tuple[YoloBox, ...] = ()
    file: str | None = None


@dataclass(frozen=True)
class SyncOutReport:
    """Counts of one export and where the YOLO folder is."""

    project_id: int
    out: Path
    counts: dict[str, int]
    boxes: int
    outcomes: tuple[TaskOutcome, ...] = field(repr=False)
    invalid: tuple[Problem, ...] = ()
    export_sha256: str = ""
    agreement: Agreement = field(default_factory=Agreement)

    def summary(self) -> str:
        """One line for people: the counts of every status."""
        parts = ", ".join(f"{s} {self.counts.get(s, 0)}" for s in STATUSES)
        return f"project {self.project_id}: {parts} ({self.boxes} boxes) -> {self.out}"

    def invalid_json(self) -> list[dict[str, Any]]:
        """The invalid tasks as the commands print them: task, annotation, box, reason."""
        return [
            {"task": p.task_id, "annotation": p.annotation_id, "box": p.box, "reason": p.reason}
            for p in self.invalid
        ]


def chosen_annotation(
    task: dict[str, Any], review: bool = False, reviewers: Reviewers | None = None
) -> dict[str, Any] | None:
    """The annotation that counts for a task, by ``ANNOTATION_RULE``.

    ``review``: reviewed ones only (by ``reviewers``; None: anyone's star or review).
    """
    submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if review:
        submitted = [a for a in submitted if reviewed(a, reviewers)]
    if not submitted:
        return None
    return max(submitted, key=recency)


def classify(
    task: dict[str, Any],
    names: list[str],
    review: bool = False,
    reviewers: Reviewers | None = None,
) -> tuple[TaskOutcome, list[Problem]]:
    """A task's outcome and the problems of its counted annotation (each naming the task)."""
    tid, data = int(task["id"]), task.get("data") or {}
    base = {"task_id": tid, "raw_key": data.get("raw_key"), "name": data.get("name")}
    chosen = chosen_annotation(task, review, reviewers)
    if chosen is None:
        cancelled_only = task.get("annotations") and all(
            a.get("was_cancelled") for a in task["annotations"]
        )
        status: Status = "skipped" if cancelled_only else "pending"
        return TaskOutcome(status=status, **base), []
    boxes, problems = [], []
    for n, result in enumerate(chosen.get("result") or [], start=1):
        try:
            boxes.append(result_to_yolo(result, names))
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(Problem(tid, chosen.get("id"), n, str(exc)))
    status = "labelled" if boxes else "negative"
    return TaskOutcome(
        status=status, annotation_id=chosen.get("id"), boxes=tuple(boxes), **base
    ), problems


def convert(
    tasks: list[dict[str, Any]],
    names: list[str],
    review: bool = False,
    strict: bool = True,
    reviewers: Reviewers | None = None,
) -> tuple[list[TaskOutcome], list[Problem]]:
    """Outcomes of all tasks and the problems found; a task with any problem is *invalid*.

    ``strict``: one ``AnnotationError`` naming every bad task instead.
    """
    outcomes, problems = [], []
    for task in sorted(tasks, key=lambda t: int(t["id"])):
        outcome, bad = classify(task, names, review, reviewers)
        outcomes.append(replace(outcome, status="invalid", boxes=()) if bad else outcome)
        problems += bad
    if problems and strict:
        bad_ids = sorted({p.task_id for p in problems})
        raise AnnotationError(
            f"{len(problems)} invalid box(es) in task(s) {bad_ids}; fix them in Label Studio "
            f"and export again:{listed([p.line() for p in problems])}"
        )
    return outcomes, problems


def _stems(outcomes: list[TaskOutcome]) -> dict[int, str]:
    """File stem per exported task: the original name; a clash gets the task id appended.

    Tasks are taken in id order, so the first task keeps the bare name in every round.
    """
    stems: dict[int, str] = {}
    used: set[str] = set()
    for o in outcomes:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(o.name or f"task-{o.task_id}").stem) or "image"
        stem = base if base not in used else f"{base}-task{o.task_id}"
        used.add(stem)
        stems[o.task_id] = stem
    return stems


def _image_bytes(task: dict[str, Any], store: ObjectStore) -> tuple[bytes, str]:
    data = task.get("data") or {}
    key = data.get("raw_key")
    if key:
        try:
            return store.get_bytes(key), key.rsplit(".", 1)[-1].lower()
        except ObjectNotFound:
            pass
    image = str(data.get("image") or "")
    inline = data_url_image(image)
    if inline:
        return inline[0], "jpg" if inline[1] == "jpeg" else inline[1]
    raise LabellingError(
        f"task {task['id']}: image {key or image[:80]!r} is neither in the raw store nor "
        "inside the task; run `qcloop labelling sync-in` against the right store"
    )


def _size_problem(task: dict[str, Any], data: bytes, annotation: int | None) -> Problem | None:
    """Why the image of ``task`` cannot be used (other bytes than its content address,
    unreadable, other size than recorded), or None."""
    meta = task.get("data") or {}
    recorded_sha = meta.get("sha256")
    if recorded_sha and hashlib.sha256(data).hexdigest() != recorded_sha:
        reason = (
            f"image bytes do not match the task's sha256 {str(recorded_sha)[:12]}...: the raw "
            "object was replaced after sync-in; put the original back or remove the task"
        )
        return Problem(int(task["id"]), annotation, None, reason)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
    except Exception as exc:
        reason = f"image unreadable ({type(exc).__name__}); replace it in the store"
        return Problem(int(task["id"]), annotation, None, reason)
    recorded = (meta.get("width"), meta.get("height"))
    if None not in recorded and (int(recorded[0]), int(recorded[1])) != (width, height):
        reason = (
            f"image is {width}x{height}, the task recorded {recorded[0]}x{recorded[1]}; "
            "the boxes were drawn on another image: relabel it"
        )
        return Problem(int(task["id"]), annotation, None, reason)
    return None


def unusable_images(
    tasks: list[dict[str, Any]],
    outcomes: list[TaskOutcome],
    store: ObjectStore,
    strict: bool,
) -> tuple[list[TaskOutcome], list[Problem], dict[int, tuple[bytes, str]]]:
    """Mark exported tasks whose image is unusable *invalid*; the images of the others.

    ``strict``: an ``AnnotationError`` naming them instead (before anything is written).
    """
    by_id = {int(t["id"]): t for t in tasks}
    exported = [o for o in outcomes if o.status in ("labelled", "negative")]
    images = {o.task_id: _image_bytes(by_id[o.task_id], store) for o in exported}
    problems = [
        p
        for o in exported
        if (p := _size_problem(by_id[o.task_id], images[o.task_id][0], o.annotation_id))
    ]
    if problems and strict:
        lines = [p.line() for p in problems]
        raise AnnotationError(f"{len(problems)} task(s) with unusable images:{listed(lines)}")
    bad = {p.task_id for p in problems}
    marked = [replace(o, status="invalid", boxes=()) if o.task_id in bad else o for o in outcomes]
    return marked, problems, {k: v for k, v in images.items() if k not in bad}


def write_yolo_folder(
    out: Path,
    outcomes: list[TaskOutcome],
    images: dict[int, tuple[bytes, str]],
    names: list[str],
    report_fields: dict[str, Any],
) -> list[TaskOutcome]:
    """Write images/, labels/, classes.txt and the export report; return outcomes with files.

    File names are given to the exported and the invalid tasks alike, so that a task
    that turns invalid never hands its name to another task with the same one.
    """
    stems = _stems([o for o in outcomes if o.status in ("labelled", "negative", "invalid")])
    exported = [o for o in outcomes if o.status in ("labelled", "negative")]
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    done: dict[int, TaskOutcome] = {}
    for o in exported:
        data, ext = images[o.task_id]
        file = f"images/{stems[o.task_id]}.{ext}"
        (out / file).write_bytes(data)
        (out / "labels" / f"{stems[o.task_id]}.txt").write_text(
            "".join(b.line() + "\n" for b in o.boxes)
        )
        done[o.task_id] = replace(o, file=file)
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    final = [done.get(o.task_id, o) for o in outcomes]
    report = report_fields | {
        "exported_at": utcnow().isoformat(),
        "annotation_rule": ANNOTATION_RULE,
        "counts": dict(Counter(o.status for o in final)),
        "tasks": [
            {k: v for k, v in asdict(o).items() if k != "boxes"} | {"boxes": len(o.boxes)}
            for o in final
        ],
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return final


def sync_out(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    out: Path,
    *,
    progress: Progress = log.info,
) -> SyncOutReport:
    """Export the project and write its verified labels as a YOLO folder at ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LabellingError(f"{out}: not empty; give a new folder for the YOLO export")
    reviewers = _reviewers(client, settings)  # an unknown reviewer fails before the export
    tasks = client.export_json(project_id)
    checksum = export_checksum(tasks)
    progress(f"exported {len(tasks)} tasks from project {project_id} (sha256 {checksum[:12]})")
    names, ls = list(settings.class_names), settings.label_studio
    outcomes, problems = convert(tasks, names, ls.review, ls.strict, reviewers)
    outcomes, unusable, images = unusable_images(
        tasks, outcomes, open_store(settings.store), ls.strict
    )
    problems += unusable
    for problem in problems:
        log.warning("left out, fix it in Label Studio: %s", problem.line())
    agreed = agreement(tasks, names)
    if agreed.tasks:
        progress(
            f"{len(agreed.tasks)} task(s) annotated by several people: mean box F1 "
            f"{agreed.mean_f1:.3f} at IoU 0.5"
        )
    fields: dict[str, Any] = {"project_id": project_id, "export_sha256": checksum}
    fields["invalid"] = [asdict(p) for p in problems]
    fields["review"] = {"on": ls.review, "reviewers": sorted(reviewers.emails) if reviewers else []}
    fields["review"] |= {"rule": REVIEW_RULE} if ls.review else {}
    fields["agreement"] = agreed.details()
    outcomes = write_yolo_folder(out, outcomes, images, names, fields)
    counts = Counter(o.status for o in outcomes)
    report = SyncOutReport(
        project_id=project_id,
        out=out,
        counts={s: counts.get(s, 0) for s in STATUSES},
        boxes=sum(len(o.boxes) for o in outcomes),
        outcomes=tuple(outcomes),
        invalid=tuple(problems),
        export_sha256=checksum,
        agreement=agreed,
    )
    progress(report.summary())
    return report


def _reviewers(client: LabelStudioClient, settings: Settings) -> Reviewers | None:
    """The listed reviewers as Label Studio users when review is on; None: anyone's star."""
    ls = settings.label_studio
    if not ls.review:
        return None
    if not ls.reviewers:
        log.warning(OPEN_REVIEW_WARNING)
        return None
    return resolve_reviewers(client, ls.reviewers)


def export_checksum(tasks: list[dict[str, Any]]) -> str:
    """sha256 of an export's JSON (keys sorted, compact): names exactly what a round read."""
    text = json.dumps(tasks, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()

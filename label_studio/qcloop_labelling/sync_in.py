"""Raw store -> Label Studio: one task per new image, least-confident first."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from qcloop.contracts import RawImageSidecar
from qcloop.dataset import current_manifest
from qcloop.removals import removal_state
from qcloop.settings import Settings
from qcloop.storage import list_raw_images, open_store
from qcloop_labelling.assist import Assistant
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.tasks import batches, confidence, image_task, known_images

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SyncInReport:
    """What one sync-in did."""

    project_id: int
    raw_images: int
    already_in_project: int
    already_in_dataset: int
    created: int
    with_predictions: int
    task_ids: tuple[int, ...]


def pending_images(
    sidecars: list[RawImageSidecar], in_project: set[str], in_dataset: set[str]
) -> list[RawImageSidecar]:
    """Images to send, least-confident first (ties: oldest capture, then key).

    Label Studio's sequential sampling hands out tasks in id order, so the import
    order is the order labellers see.
    """
    todo = [s for s in sidecars if s.sha256 not in in_project and s.sha256 not in in_dataset]
    return sorted(todo, key=lambda s: (confidence(s), s.captured_at, s.key))


def sync_in(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    *,
    batch_size: int = 100,
    include_labelled: bool = False,
    s3_bucket: str | None = None,
    assist: Assistant | None = None,
    progress: Progress = log.info,
) -> SyncInReport:
    """Create a task for every raw image that has none yet (and is not labelled already).

    Images already in the checked-out dataset version are left out unless
    ``include_labelled``: they were labelled before; removed images
    (``qcloop labelling remove``) always. With ``s3_bucket`` the tasks
    point at ``s3://<bucket>/<key>`` (the project needs an S3 storage of that bucket)
    instead of carrying the image. ``assist`` predicts for images that no model
    has seen yet (model-assisted labelling), before the least-confident ordering.
    """
    store = open_store(settings.store)
    sidecars = list_raw_images(store)
    in_project = known_images(client, project_id)
    manifest = None if include_labelled else current_manifest(settings.workspace.resolve())
    in_dataset = {img.sha256 for img in manifest.images} if manifest else set()
    removed = set(removal_state(store).removed)  # out of the dataset on purpose: no task
    todo = pending_images(sidecars, in_project, in_dataset | removed)
    if assist is not None:
        unseen = sum(1 for s in todo if s.model is None)
        progress(f"  pre-annotating {unseen} images that no model has seen")
        todo = [assist(s, store.get_bytes(s.key)) if s.model is None else s for s in todo]
        todo = pending_images(todo, in_project, in_dataset | removed)  # order again: new scores
    progress(f"{len(sidecars)} raw images, {len(todo)} new for project {project_id}")
    ids: list[int] = []
    for batch in batches(todo, batch_size):
        tasks = [
            image_task(s, f"s3://{s3_bucket}/{s.key}" if s3_bucket else store.get_bytes(s.key))
            for s in batch
        ]
        ids += client.import_tasks(project_id, tasks)
        progress(f"  created {len(ids)}/{len(todo)} tasks")
    return SyncInReport(
        project_id=project_id,
        raw_images=len(sidecars),
        already_in_project=sum(1 for s in sidecars if s.sha256 in in_project),
        already_in_dataset=sum(
            1 for s in sidecars if s.sha256 in in_dataset and s.sha256 not in in_project
        ),
        created=len(ids),
        with_predictions=sum(1 for s in todo if s.predictions),
        task_ids=tuple(ids),
    )

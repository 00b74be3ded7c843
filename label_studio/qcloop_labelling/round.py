"""One labelling round: Label Studio -> YOLO folder -> a new dataset version if anything is new."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qcloop.contracts import DatasetManifest
from qcloop.dataset import current_manifest, import_yolo_folder, known_versions
from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.sync_out import SyncOutReport, sync_out

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RoundResult:
    """What a round exported and which dataset version it left checked out."""

    export: SyncOutReport
    manifest: DatasetManifest | None
    created: bool


def run_round(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    *,
    progress: Progress | None = None,
) -> RoundResult:
    """Export verified labels and import them as the next dataset version.

    Nothing labelled, or nothing that the current version does not already hold,
    creates no version. Invalid annotations stop the round before any version.
    ``progress`` gets every step's messages; by default each module logs its own.
    """
    passed = {"progress": progress} if progress else {}
    with tempfile.TemporaryDirectory(prefix="qcloop-labelling-") as tmp:
        folder = Path(tmp) / f"label-studio-project-{project_id}"
        export = sync_out(settings, client, project_id, folder, **passed)
        if export.counts["labelled"] + export.counts["negative"] == 0:
            manifest = current_manifest(settings.workspace.resolve())
            versions = known_versions(settings)  # the store's, not this (maybe fresh) workspace's
            where = versions[-1] if versions else "no version yet"
            said = f"nothing labelled in project {project_id}: dataset stays at {where}"
            (progress or log.info)(said)
            return RoundResult(export, manifest, False)
        manifest, created = import_yolo_folder(settings, folder, commit=True, **passed)
    return RoundResult(export, manifest, created)

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
    creates no version. Invalid tasks are left out and reported in ``export.invalid``
    (with ``label_studio.strict`` they stop the round before any version). The
    version's manifest ``source`` and commit message name the project, its URL and the
    export's sha256. ``progress`` gets every step's messages; by default each module
    logs its own.
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
        manifest, created = import_yolo_folder(
            settings,
            folder,
            commit=True,
            label_source=provenance(settings, client, project_id, export),
            **passed,
        )
    return RoundResult(export, manifest, created)


def provenance(
    settings: Settings, client: LabelStudioClient, project_id: int, export: SyncOutReport
) -> str:
    """Where a round's labels came from: the project, its URL and the export's sha256."""
    title = client.project(project_id).get("title", settings.label_studio.project_title)
    return (
        f"Label Studio project {project_id} '{title}' at {client.url}/projects/{project_id}/, "
        f"export sha256 {export.export_sha256}"
    )

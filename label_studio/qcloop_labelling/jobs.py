"""The labelling steps as whole jobs on settings: what the CLI and the KFP components run."""

from __future__ import annotations

from qcloop.settings import Settings
from qcloop_labelling.assist import production_assistant
from qcloop_labelling.client import connect
from qcloop_labelling.metrics import pushes_figures, round_figures, sync_in_figures
from qcloop_labelling.project import find_project
from qcloop_labelling.round import RoundResult, run_round
from qcloop_labelling.sync_in import SyncInReport, sync_in


@pushes_figures("sync-in", sync_in_figures)
def sync_in_job(
    settings: Settings, *, batch_size: int | None = None, include_labelled: bool = False
) -> SyncInReport:
    """Raw store -> tasks with pre-annotations, in the configured project."""
    ls = settings.label_studio
    if ls.images == "s3":
        from qcloop_labelling.storage import s3_fields

        s3_fields(0, settings.store, ls)  # fails early, clearly, without an S3 store
    client = connect(ls)
    assistant = production_assistant(settings) if ls.assist else None
    try:
        return sync_in(
            settings,
            client,
            find_project(client, ls.project_title),
            batch_size=batch_size or ls.batch_size,
            include_labelled=include_labelled,
            s3_bucket=settings.store.bucket if ls.images == "s3" else None,
            assist=assistant[0] if assistant else None,
        )
    finally:
        client.close()
        if assistant:
            assistant[1]()


@pushes_figures("round", round_figures)
def round_job(settings: Settings) -> RoundResult:
    """Export verified labels -> next dataset version, if anything is new."""
    client = connect(settings.label_studio)
    try:
        return run_round(
            settings, client, find_project(client, settings.label_studio.project_title)
        )
    finally:
        client.close()

"""Figures of the labelling jobs, pushed to a Prometheus Pushgateway.

The labelling sync runs as a batch job (the chart's CronJob): nothing stays up for
Prometheus to scrape, so with ``label_studio.pushgateway`` set each step pushes its
figures there after it ran, whether it succeeded or failed, and Prometheus scrapes the
Pushgateway. The grouping key is ``job="qcloop-labelling"``, ``project`` (the project's
title) and ``step`` (``sync-in`` or ``round``); the Pushgateway adds those labels to every
sample. A push adds to its group (HTTP POST): a failed step replaces its run figures and
leaves ``last_success`` and the counts of the last step that succeeded as they were. A push
that fails logs a warning and never fails the job.

| metric (``qcloop_labelling_...``) | step | what |
| --- | --- | --- |
| ``last_run_timestamp_seconds`` | both | when the step last ended |
| ``last_success_timestamp_seconds`` | both | when it last ended without an error |
| ``run_duration_seconds`` | both | how long its last run took |
| ``run_failed`` | both | 1 if its last run failed, else 0 |
| ``sync_in_raw_images`` | sync-in | images in the raw store |
| ``sync_in_tasks_created`` | sync-in | tasks the last sync-in created |
| ``sync_in_tasks_with_predictions`` | sync-in | of those, the pre-annotated |
| ``export_tasks`` (label ``status``) | round | the project's tasks by outcome |
| ``export_boxes`` | round | boxes the last export held |
| ``dataset_version`` | round | the version checked out (v3: 3; 0: none yet) |
| ``dataset_version_created`` | round | 1 if the last round created it, else 0 |

``status`` is an outcome of the export (``qcloop_labelling.sync_out``): labelled,
negative, skipped, pending or invalid.

prometheus-client is imported only when a push is due.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit

from qcloop.settings import Settings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from qcloop_labelling.round import RoundResult
    from qcloop_labelling.sync_in import SyncInReport

log = logging.getLogger(__name__)

JOB = "qcloop-labelling"
PREFIX = "qcloop_labelling_"
PUSH_TIMEOUT_S = 10.0
Step = Literal["sync-in", "round"]
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Figure:
    """One sample to push: a gauge ``PREFIX + name`` with its labels and value."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def run_figures(ended: float, duration_s: float, *, failed: bool) -> list[Figure]:
    """When a step ended, how long it took, whether it failed (its success time if not)."""
    figures = [
        Figure("last_run_timestamp_seconds", "When the step last ended", ended),
        Figure("run_duration_seconds", "How long its last run took", duration_s),
        Figure("run_failed", "1 if its last run failed, else 0", float(failed)),
    ]
    if not failed:
        figures.append(
            Figure("last_success_timestamp_seconds", "When it last ended without error", ended)
        )
    return figures


def sync_in_figures(report: SyncInReport) -> list[Figure]:
    """What a sync-in found and created."""
    return [
        Figure("sync_in_raw_images", "Images in the raw store", report.raw_images),
        Figure("sync_in_tasks_created", "Tasks the last sync-in created", report.created),
        Figure(
            "sync_in_tasks_with_predictions",
            "Tasks the last sync-in created with pre-annotations",
            report.with_predictions,
        ),
    ]


def round_figures(result: RoundResult) -> list[Figure]:
    """The export's tasks by outcome and boxes, the dataset version left checked out."""
    help_ = "The project's tasks by outcome of the last export"
    figures = [
        Figure("export_tasks", help_, count, {"status": status})
        for status, count in result.export.counts.items()
    ]
    version = int(result.manifest.version[1:]) if result.manifest else 0
    return [
        *figures,
        Figure("export_boxes", "Boxes the last export held", result.export.boxes),
        Figure("dataset_version", "Dataset version checked out (v3: 3; 0: none)", version),
        Figure(
            "dataset_version_created",
            "1 if the last round created that version, else 0",
            float(result.created),
        ),
    ]


def families(figures: list[Figure]) -> Iterator[Metric]:
    """The figures as gauge families, one per name."""
    from prometheus_client.core import GaugeMetricFamily

    by_name: dict[str, list[Figure]] = {}
    for figure in figures:
        by_name.setdefault(figure.name, []).append(figure)
    for name, samples in by_name.items():
        labels = sorted(samples[0].labels)
        family = GaugeMetricFamily(PREFIX + name, samples[0].help, labels=labels)
        for s in samples:
            family.add_metric([s.labels[k] for k in labels], s.value)
        yield family


class _Figures:
    """A collector of fixed figures (what one push sends)."""

    def __init__(self, figures: list[Figure]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        return families(self.figures)


def registry_of(figures: list[Figure]) -> CollectorRegistry:
    """A registry of its own holding only ``figures``."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Figures(figures))
    return registry


def shown(url: str) -> str:
    """The URL without a user or password, as a log line may name it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=host + port).geturl() if parts.netloc else url


def push(url: str, project: str, step: Step, figures: list[Figure]) -> bool:
    """Add ``figures`` to the group (job, project, step) of the Pushgateway at ``url``.

    True if it took them; a failure logs a warning naming the URL and returns False.
    """
    try:
        from prometheus_client import pushadd_to_gateway

        pushadd_to_gateway(
            url,
            job=JOB,
            registry=registry_of(figures),
            grouping_key={"project": project, "step": step},
            timeout=PUSH_TIMEOUT_S,
        )
    except Exception as exc:  # the figures are a side show: the job goes on
        log.warning(
            "could not push the %s figures to the Pushgateway %s: %s", step, shown(url), exc
        )
        return False
    log.debug("pushed %d %s figures to %s", len(figures), step, shown(url))
    return True


def pushes_figures(
    step: Step, figures: Callable[[R], list[Figure]]
) -> Callable[[Callable[Concatenate[Settings, P], R]], Callable[Concatenate[Settings, P], R]]:
    """Decorate a job on settings: after each run, success or failure, push its figures.

    Without ``label_studio.pushgateway`` the job runs as it is. A failed run pushes
    ``run_failed 1`` and its end, then raises on.
    """

    def decorate(
        job: Callable[Concatenate[Settings, P], R],
    ) -> Callable[Concatenate[Settings, P], R]:
        @functools.wraps(job)
        def run(settings: Settings, /, *args: P.args, **kwargs: P.kwargs) -> R:
            url, project = settings.label_studio.pushgateway, settings.label_studio.project_title
            if url is None:
                return job(settings, *args, **kwargs)
            started = time.monotonic()
            try:
                result = job(settings, *args, **kwargs)
            except Exception:
                push(
                    url,
                    project,
                    step,
                    run_figures(time.time(), time.monotonic() - started, failed=True),
                )
                raise
            ran = run_figures(time.time(), time.monotonic() - started, failed=False)
            push(url, project, step, [*ran, *figures(result)])
            return result

        return run

    return decorate

"""The labelling jobs push their figures to a real Pushgateway: each step after it ran, a
failed step too (its last success stays), and a Pushgateway out of reach only warns."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qcloop.settings import Settings
from qcloop_labelling.errors import LabelStudioUnavailable
from qcloop_labelling.jobs import round_job, sync_in_job
from qcloop_labelling.settings import LabelStudioSettings
from tests.labelling.helpers import annotate, metal_tag_images, put_feedback_image, rect
from tests.services import Service, free_port

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]

PUSHGATEWAY_MISSING = (
    "prometheus-pushgateway is not installed: apt-get install -y prometheus-pushgateway"
)


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway on loopback, in memory only (no persistence file); its URL."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.fail(PUSHGATEWAY_MISSING)
    port = free_port()
    log = tmp_path_factory.mktemp("pushgateway") / "pushgateway.log"
    service = Service("pushgateway", [binary, f"--web.listen-address=127.0.0.1:{port}"], log)
    service.start(port)
    yield f"http://127.0.0.1:{port}"
    service.stop()


def pushing(settings: Settings, ls: LabelStudioSettings, url: str) -> Settings:
    """``settings`` on the test's Label Studio project, pushing to ``url``, no model assist."""
    update = {"pushgateway": url, "assist": False}
    return settings.model_copy(update={"label_studio": ls.model_copy(update=update)})


def pushed(url: str, project: str, step: str) -> dict[tuple[str, str], float]:
    """The labelling samples of one group, as the Pushgateway's /metrics shows them:
    (name, status label) -> value."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    group = {"job": "qcloop-labelling", "project": project, "step": step}
    return {
        (s.name, s.labels.get("status", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("qcloop_labelling_") and group.items() <= s.labels.items()
    }


def test_a_sync_in_and_a_round_push_their_figures(
    settings: Settings, project_id: int, ls_settings: LabelStudioSettings, pushgateway: str
) -> None:
    # given three raw images, two with detections, and jobs that push to the Pushgateway
    jobs = pushing(settings, ls_settings, pushgateway)
    for n, scores in enumerate([[0.3], [0.6, 0.2], []]):
        put_feedback_image(settings, metal_tag_images(1, skip=n)[0], scores, minute=n)
    before = time.time()
    # when a sync-in runs, one task is labelled, one marked defect-free, and a round runs
    report = sync_in_job(jobs)
    token = ls_settings.token.get_secret_value()
    annotate(ls_settings.url, token, report.task_ids[0], [rect(10, 10, 20, 30)])
    annotate(ls_settings.url, token, report.task_ids[1], [])
    result = round_job(jobs)
    after = time.time()
    # then the Pushgateway shows what the sync-in found and created
    title = ls_settings.project_title
    sync = pushed(pushgateway, title, "sync-in")
    assert sync[("qcloop_labelling_sync_in_raw_images", "")] == 3
    assert sync[("qcloop_labelling_sync_in_tasks_created", "")] == 3
    assert sync[("qcloop_labelling_sync_in_tasks_with_predictions", "")] == 2
    assert sync[("qcloop_labelling_run_failed", "")] == 0
    # and the round's tasks by outcome and the version it created
    assert result.created
    rnd = pushed(pushgateway, title, "round")
    tasks = {status: v for (name, status), v in rnd.items() if name.endswith("export_tasks")}
    assert tasks == {"labelled": 1, "negative": 1, "pending": 1, "skipped": 0, "invalid": 0}
    assert rnd[("qcloop_labelling_export_boxes", "")] == 1
    assert rnd[("qcloop_labelling_dataset_version", "")] == 1
    assert rnd[("qcloop_labelling_dataset_version_created", "")] == 1
    # and each step when it ran, succeeded and how long it took
    for figures in (sync, rnd):
        assert figures[("qcloop_labelling_run_failed", "")] == 0
        ended = figures[("qcloop_labelling_last_run_timestamp_seconds", "")]
        assert before <= ended <= after
        assert figures[("qcloop_labelling_last_success_timestamp_seconds", "")] == ended
        assert 0 < figures[("qcloop_labelling_run_duration_seconds", "")] <= after - before


def test_a_failed_round_pushes_its_failure_and_keeps_the_last_success(
    settings: Settings, project_id: int, ls_settings: LabelStudioSettings, pushgateway: str
) -> None:
    # given a round that succeeded (nothing labelled yet: no version)
    jobs = pushing(settings, ls_settings, pushgateway)
    assert not round_job(jobs).created
    title = ls_settings.project_title
    succeeded = pushed(pushgateway, title, "round")
    last_success = succeeded[("qcloop_labelling_last_success_timestamp_seconds", "")]
    assert succeeded[("qcloop_labelling_dataset_version", "")] == 0
    # when the next round cannot reach Label Studio
    gone = pushing(
        settings,
        ls_settings.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"}),
        pushgateway,
    )
    with pytest.raises(LabelStudioUnavailable):
        round_job(gone)
    # then the job failed as it would have without metrics, and its failure was pushed
    failed = pushed(pushgateway, title, "round")
    assert failed[("qcloop_labelling_run_failed", "")] == 1
    assert failed[("qcloop_labelling_last_run_timestamp_seconds", "")] > last_success
    # and the last success, and the figures of that round, are still there
    assert failed[("qcloop_labelling_last_success_timestamp_seconds", "")] == last_success
    assert failed[("qcloop_labelling_export_tasks", "pending")] == 0


def test_a_pushgateway_out_of_reach_only_warns(
    settings: Settings,
    project_id: int,
    ls_settings: LabelStudioSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a Pushgateway URL where nothing listens (with a password in it)
    port = free_port()
    jobs = pushing(settings, ls_settings, f"http://qcloop:s3cret@127.0.0.1:{port}")
    put_feedback_image(settings, metal_tag_images(1, skip=5)[0], [0.4])
    # when a sync-in and a round run
    with caplog.at_level(logging.WARNING, logger="qcloop_labelling.metrics"):
        report = sync_in_job(jobs)
        result = round_job(jobs)
    # then both did their work
    assert report.created == 1
    assert result.export.counts["pending"] == 1
    # and each logged a warning naming the Pushgateway, never its password
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    for step, line in zip(["sync-in", "round"], warnings, strict=True):
        assert f"push the {step} figures" in line
        assert f"http://127.0.0.1:{port}" in line
        assert "s3cret" not in line

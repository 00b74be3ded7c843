"""The S3 option: tasks point into the raw store's bucket; Label Studio serves the images."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from qcloop.settings import Settings, StoreSettings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.storage import ensure_s3_storage
from qcloop_labelling.sync_in import sync_in
from qcloop_labelling.sync_out import sync_out
from tests.labelling.helpers import annotate, metal_tag_images, put_feedback_image, rect

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def test_s3_tasks_resolve_through_the_project_storage(
    settings: Settings,
    s3_store_settings: StoreSettings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    # given raw images in an S3 bucket (moto's server) and the project's S3 storage
    settings = settings.model_copy(update={"store": s3_store_settings})
    ls = ls_settings.model_copy(update={"images": "s3"})
    images = metal_tag_images(2, skip=14)
    for n, image in enumerate(images):
        put_feedback_image(settings, image, [0.3 + n / 10])
    first = ensure_s3_storage(client, project_id, settings.store, ls)
    assert first[1] == "created"
    assert ensure_s3_storage(client, project_id, settings.store, ls) == (first[0], "unchanged")
    # when the images are synced in as s3:// references
    report = sync_in(
        settings, client, project_id, s3_bucket=s3_store_settings.bucket, progress=lambda _: None
    )
    # then Label Studio resolves each to a URL that serves the image bytes
    token = ls.token.get_secret_value()
    auth = {"Authorization": f"Token {token}"}
    for task_id, image in zip(report.task_ids, images, strict=True):
        task = requests.get(f"{ls.url}/api/tasks/{task_id}/", headers=auth, timeout=30).json()
        assert task["data"]["raw_key"].startswith("raw/")
        resolved = task["data"]["image"]
        assert "resolve" in resolved, resolved
        url = resolved if resolved.startswith("http") else f"{ls.url}{resolved}"
        got = requests.get(url, headers=auth, timeout=30)
        assert got.status_code == 200, got.text[:300]
        assert got.content == image.read_bytes()
    # and the export takes the image bytes from the store
    annotate(ls.url, token, report.task_ids[0], [rect(10, 10, 20, 20)])
    out = sync_out(settings, client, project_id, tmp_path / "out", progress=lambda _: None)
    assert out.counts["labelled"] == 1
    assert (tmp_path / "out" / "images" / images[0].name).read_bytes() == images[0].read_bytes()

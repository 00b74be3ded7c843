"""The S3 option: tasks point into the raw store's bucket; Label Studio serves the images,
or sends browsers to the S3 endpoint with presigned URLs that expire."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests

from qcloop.settings import Settings, StoreSettings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.storage import ensure_s3_storage
from qcloop_labelling.sync_in import sync_in
from qcloop_labelling.sync_out import sync_out
from tests.labelling.browser import READY_S, chromium, labeller_page, open_task
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


def sigv4_query_signature(url: str, secret_key: str) -> str:
    """The SigV4 signature S3 expects for a presigned GET ``url`` (its own
    ``X-Amz-Signature`` left out), computed from the AWS specification: S3 and MinIO
    refuse the URL when they differ, so every signed parameter (the expiry too) is fixed."""
    parts = urlsplit(url)
    query = sorted((k, v) for k, v in parse_qsl(parts.query) if k != "X-Amz-Signature")
    params = dict(query)
    canonical = "\n".join(
        [
            "GET",
            parts.path,
            "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query),
            f"host:{parts.netloc}\n",
            params["X-Amz-SignedHeaders"],
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret_key}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_presigned_urls_reach_the_store_and_expire(
    settings: Settings,
    s3_store_settings: StoreSettings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """moto's S3 server does not check a presigned URL's expiry (S3 and MinIO do): the test
    checks the window Label Studio signs into each URL, and that the signature fixes it."""
    # given raw images in an S3 bucket and the project's storage handing out presigned URLs
    # valid 2 minutes
    settings = settings.model_copy(update={"store": s3_store_settings})
    ls = ls_settings.model_copy(update={"images": "s3", "presign": True, "presign_ttl": 2})
    image = metal_tag_images(1, skip=13)[0]
    put_feedback_image(settings, image, [0.3])
    storage_id, action = ensure_s3_storage(client, project_id, settings.store, ls)
    assert action == "created"
    (task_id,) = sync_in(
        settings, client, project_id, s3_bucket=s3_store_settings.bucket, progress=lambda _: None
    ).task_ids
    token = ls.token.get_secret_value()
    auth = {"Authorization": f"Token {token}"}

    def presigned() -> tuple[requests.Response, datetime, datetime]:
        task = requests.get(f"{ls.url}/api/tasks/{task_id}/", headers=auth, timeout=30).json()
        before = datetime.now(timezone.utc).replace(microsecond=0)
        got = requests.get(
            f"{ls.url}{task['data']['image']}", headers=auth, allow_redirects=False, timeout=30
        )
        return got, before, datetime.now(timezone.utc)

    # when the browser asks Label Studio for the task's image
    redirect, before, after = presigned()
    # then it is sent on to the S3 endpoint itself with a presigned URL
    assert redirect.status_code == 303, redirect.text[:300]
    url = redirect.headers["Location"]
    assert url.startswith(f"{s3_store_settings.endpoint}/{s3_store_settings.bucket}/raw/"), url
    assert redirect.headers["Cache-Control"] == "no-store, max-age=120"
    # and the URL alone (no Label Studio token, no S3 keys) gets the image's bytes
    got = requests.get(url, timeout=30)
    assert got.status_code == 200, got.text[:300]
    assert got.content == image.read_bytes()
    assert got.headers["Content-Type"] == "image/jpeg"
    # and it is valid 2 minutes from when it was made, a window its signature fixes
    params = dict(parse_qsl(urlsplit(url).query))
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=timezone.utc
    )
    assert before <= signed_at <= after
    assert params["X-Amz-Expires"] == "120"
    assert params["X-Amz-SignedHeaders"] == "host"
    secret = s3_store_settings.secret_key.get_secret_value()
    assert params["X-Amz-Signature"] == sigv4_query_signature(url, secret)
    stretched = url.replace("X-Amz-Expires=120", "X-Amz-Expires=604800")
    assert sigv4_query_signature(stretched, secret) != params["X-Amz-Signature"]

    # when a labeller opens the task in a browser
    endpoint = s3_store_settings.endpoint
    off_host: list[str] = []
    image = f"GET /{s3_store_settings.bucket}/raw/"
    with (
        chromium() as browser,
        labeller_page(browser, ls.url, token, off_host, also_allow=[endpoint]) as page,
        caplog.at_level(logging.INFO, logger="werkzeug"),  # moto's server, in this process
    ):
        before = len(caplog.records)

        def fetched() -> list[str]:
            """The image requests the S3 endpoint logged since the task was opened."""
            lines = [r.getMessage() for r in caplog.records[before:] if r.name == "werkzeug"]
            return [line for line in lines if image in line]

        open_task(page, ls.url, project_id, task_id)
        page.screenshot(path=tmp_path / "presigned-task.png")
        deadline = time.monotonic() + READY_S  # the image may be drawn before it is logged
        while not fetched() and time.monotonic() < deadline:
            page.wait_for_timeout(100)
    # then the browser fetched the image from the S3 endpoint with a presigned URL (signed
    # in the query; Label Studio's own reads, when it proxies, sign a header), and from
    # nowhere else. (The endpoint's log, not the page's response events: with routing on,
    # Playwright at times reports the redirect and the image as one 200 of Label Studio's.)
    assert fetched(), caplog.text[-2000:]
    assert all("X-Amz-Signature=" in line and "X-Amz-Expires=120" in line for line in fetched())
    assert all('" 200 ' in line for line in fetched()), fetched()
    assert off_host == []

    # when the settings give URLs 5 minutes and the bootstrap runs again, twice
    longer = ls.model_copy(update={"presign_ttl": 5})
    first = ensure_s3_storage(client, project_id, settings.store, longer)
    second = ensure_s3_storage(client, project_id, settings.store, longer)
    # then the same storage signs for 5 minutes from now on
    assert (first, second) == ((storage_id, "updated"), (storage_id, "unchanged"))
    redirect, _, _ = presigned()
    assert dict(parse_qsl(urlsplit(redirect.headers["Location"]).query))["X-Amz-Expires"] == "300"

"""The ML backend's boxes in a real browser: what a labeller sees on a task that came in bare.

Headless Chromium (``tests.labelling.browser``) at 1280x800, a labeller signed up through
the invite link, the real Label Studio of the session, the real qcloop ML backend beside it
(``tests.labelling.test_ml_backend``) serving a real released 1-epoch model from the S3
endpoint the tests run. The task is a photo added by hand (``qcloop raw add``) and synced in
without pre-annotations, so any box on it can only come from the backend.

The 1-epoch model's most confident boxes are the whole photo (it has learnt no place yet),
so their outline runs along the photo's border, which fills the canvas: the labeller zooms
out once to leave a margin around it, and the control is the same spot with the regions
hidden (a whole-photo box is its own mirror).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from qcloop.raw import add_raw_images
from qcloop.settings import Settings, StoreSettings
from qcloop.signing import generate_keypair
from qcloop.storage import open_store, sha256_bytes
from qcloop_labelling.assist import load_model
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from tests.labelling.browser import (
    READY_S,
    Rect,
    box_drawn,
    chromium,
    image_rect,
    labeller_page,
)
from tests.labelling.helpers import metal_tag_images, release_model, task_detail
from tests.labelling.test_ml_backend import backend_settings, bootstrap, running, wait_serving

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]

VERSION = "qcloop-detector:7"


def open_stream(page: Page, url: str, project_id: int) -> None:
    """Open the project's labelling stream ("Label All Tasks"): Label Studio hands out the
    next task; wait until its image is shown, and close the instructions that the stream
    opens with (the project shows them) as a labeller does."""
    page.goto(f"{url}/projects/{project_id}/data?labeling=1")
    page.wait_for_selector(".lsf-label", timeout=READY_S * 1000)
    page.wait_for_function(
        "() => { const i = document.querySelector('.lsf-image img');"
        " return i && i.complete && i.naturalWidth > 0"
        " && document.querySelector('.konvajs-content'); }",
        timeout=READY_S * 1000,
    )
    page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Close modal").click(timeout=READY_S * 1000)
    page.wait_for_selector(".lsf-modal-ls", state="detached", timeout=READY_S * 1000)


def shown_image(page: Page) -> str:
    """sha256 of the bytes of the image the editor shows."""
    digest: str = page.evaluate(
        """async () => {
          const src = document.querySelector('.lsf-image img').src;
          const data = await (await fetch(src)).arrayBuffer();
          const hash = await crypto.subtle.digest('SHA-256', data);
          return [...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, '0')).join('');
        }"""
    )
    return digest


def zoom_out(page: Page) -> None:
    """Press the editor's zoom-out button once: a margin around the photo on the canvas."""
    before = image_rect(page)
    page.locator('[aria-label="zoom-out"]').click()
    page.wait_for_function(
        "(w) => document.querySelector('.lsf-image img').getBoundingClientRect().width < w",
        arg=before.width,
        timeout=READY_S * 1000,
    )


def stage_rect(page: Page) -> Rect:
    """The editor's canvas: what of the image and its regions is on screen."""
    found = page.evaluate(
        "() => { const r = document.querySelector('.konvajs-content').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; }"
    )
    return Rect(**found)


def test_a_labeller_sees_the_backends_boxes_on_a_task_that_came_without_any(
    settings: Settings,
    ls_settings: LabelStudioSettings,
    s3_store_settings: StoreSettings,
    client: LabelStudioClient,
    project_id: int,
    scratch_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a photo added by hand (no model has seen it) and synced in without an assistant:
    # a task with no pre-annotation at all
    key, public = generate_keypair(tmp_path / "keys")
    settings = backend_settings(settings, ls_settings, public, s3_store_settings)
    store = open_store(settings.store)
    photo = metal_tag_images(1, skip=14)[0]  # a capture the model never saw
    assert add_raw_images(store, [photo], source="upload", progress=lambda _: None).added == 1
    report = sync_in(settings, client, project_id, progress=lambda _: None)
    (task_id,) = report.task_ids
    url, token = ls_settings.url, ls_settings.token.get_secret_value()  # type: ignore[union-attr]
    assert report.with_predictions == 0
    assert task_detail(url, token, task_id)["predictions"] == []
    # and version 7 released, the backend's floor at half the model's best score on this
    # photo: the labeller gets its most confident boxes (a 1-epoch model scores everything
    # low; its ~90 boxes at the other tests' floor of 1e-4 would bury the photo)
    release = release_model(settings, scratch_onnx, key, "7")
    model = load_model(release, store, conf=1e-4)
    try:
        best = max(d.score for d in model.detect(photo.read_bytes()))
    finally:
        model.close()
    ls = settings.label_studio.model_copy(update={"assist_conf": best / 2})
    settings = settings.model_copy(update={"label_studio": ls})
    off_host: list[str] = []
    with running(settings) as server:
        wait_serving(server, VERSION)
        # and `qcloop labelling bootstrap` connecting the backend: the project's model
        # version becomes the backend's
        connected = bootstrap(settings, capsys)["ml_backend"]
        with chromium() as browser, labeller_page(browser, url, token, off_host) as page:
            # when a labeller opens the labelling stream
            open_stream(page, url, project_id)
            page.wait_for_selector(".lsf-outliner-item", timeout=READY_S * 1000)
            listed = page.locator(".lsf-outliner-item").count()
            shown = shown_image(page)
            # (the photo fills its canvas, so a whole-photo box's outline lies on the canvas's
            # edge: the labeller zooms out once to leave a margin around it)
            zoom_out(page)
            photo_at, canvas = image_rect(page), stage_rect(page)
            predictions = task_detail(url, token, task_id)["predictions"]
            regions = [r["value"] for p in predictions for r in p["result"]]
            drawn = [box_drawn(page, value) for value in regions]
            page.screenshot(path=tmp_path / "ml-backend-boxes.png")
            # and hides the regions (the editor's eye button): the control, same spot
            page.get_by_role("button", name="Hide all regions").click()
            page.get_by_role("button", name="Show all regions").wait_for(timeout=READY_S * 1000)
            page.evaluate("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r)))")
            hidden = [box_drawn(page, value, settle_s=0) for value in regions]
            page.screenshot(path=tmp_path / "regions-hidden.png")
    # then the stream showed this task's photo, all of it on the canvas
    assert shown == sha256_bytes(photo.read_bytes())
    assert (
        photo_at.x >= canvas.x
        and photo_at.y >= canvas.y
        and photo_at.right <= canvas.right + 1
        and photo_at.bottom <= canvas.bottom + 1
    ), (photo_at, canvas)
    # and the backend is connected, serving the released version
    assert connected["model_version"] == VERSION
    assert client.project(project_id)["model_version"] == ls.ml_backend.title
    # and the task carries the backend's prediction, stamped with the released version,
    # which Label Studio asked for when the labeller opened the task
    assert [p["model_version"] for p in predictions] == [VERSION], predictions
    assert regions and {r["rectanglelabels"][0] for r in regions} == {"scratch"}, regions
    # and the editor lists each box, and draws each where the backend put it, in the
    # label's colour; with the regions hidden, nothing is drawn there
    assert listed == len(regions), (listed, regions)
    assert min(drawn) > 0.9, (drawn, regions, tmp_path)
    assert max(hidden) < 0.2, (hidden, regions, tmp_path)
    # and the browser asked nothing of the backend or any other host
    assert off_host == []

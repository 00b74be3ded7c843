"""Label Studio in headless Chromium at 1280x800, as a labeller sees it: the label choice
in view beside the image, the model's boxes drawn, a data manager without qcloop's
bookkeeping columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from tests.labelling.browser import (
    VIEWPORT,
    InView,
    PhotoOnCanvas,
    Rect,
    box_drawn,
    chromium,
    data_manager_columns,
    image_rect,
    label_choice_in_view,
    labeller_page,
    open_task,
    photo_on_canvas,
    skip_to_next,
    wheel_zoom,
)
from tests.labelling.helpers import metal_tag_images, put_feedback_image, task_detail
from tests.labelling.test_ml_backend_browser import open_stream

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def turned(image: Path, folder: Path) -> Path:
    """The photo a quarter turn round (a camera mounted on its side): taller than wide."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{image.stem}-turned.jpg"
    with Image.open(image) as photo:
        photo.transpose(Image.Transpose.ROTATE_90).save(out, quality=95)
    return out


def mirrored(value: dict[str, float]) -> dict[str, float]:
    """The same box mirrored through the image's centre: where no box is drawn."""
    return value | {
        "x": 100 - value["x"] - value["width"],
        "y": 100 - value["y"] - value["height"],
    }


def landscape_and_portrait(
    settings: Settings, client: LabelStudioClient, project_id: int, tmp_path: Path
) -> list[int]:
    """Tasks of a 450x300 photo and of the same photo turned (300x450), synced in from the
    raw store in that order, each with one box the edge model predicted."""
    photo = metal_tag_images(1, skip=5)[0]
    for n, image in enumerate((photo, turned(photo, tmp_path / "turned"))):
        put_feedback_image(settings, image, [0.4], minute=n)
    task_ids = sync_in(settings, client, project_id, progress=lambda _: None).task_ids
    assert len(task_ids) == 2, task_ids
    return list(task_ids)


def test_label_choice_stays_beside_the_image_and_the_predicted_box_is_drawn(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    # given a landscape photo and a portrait one (as tall as the editor allows) synced in
    # from the raw store, each with one box the edge model predicted
    task_ids = landscape_and_portrait(settings, client, project_id, tmp_path)
    url, token = ls_settings.url, ls_settings.token.get_secret_value()
    predicted = {
        t: task_detail(url, token, t)["predictions"][0]["result"][0]["value"] for t in task_ids
    }
    # when a labeller opens each task in a 1280x800 window
    seen: dict[int, InView] = {}
    drawn: dict[int, float] = {}
    not_drawn: dict[int, float] = {}
    off_host: list[str] = []
    with chromium() as browser, labeller_page(browser, url, token, off_host) as page:
        for task_id, box in predicted.items():
            open_task(page, url, project_id, task_id)
            seen[task_id] = label_choice_in_view(page, "scratch")
            drawn[task_id] = box_drawn(page, box)
            not_drawn[task_id] = box_drawn(page, mirrored(box), settle_s=0)
            page.screenshot(path=tmp_path / f"task-{task_id}.png")
    # then the label choice is in view, uncovered, beside the image (not below it), and
    # the image starts in view
    for task_id, where in seen.items():
        assert where.visible, (task_id, where)
        assert where.label.y < where.image.bottom, (task_id, where)
        assert where.label.x >= where.image.right, (task_id, where)
        assert 0 <= where.image.y < VIEWPORT["height"] / 2, (task_id, where)
    # and the model's box is drawn where it predicted it, in the label's colour, and
    # nowhere else the check looks
    for task_id in predicted:
        assert drawn[task_id] > 0.9, (task_id, drawn[task_id], tmp_path)
        assert not_drawn[task_id] < 0.2, (task_id, not_drawn[task_id], tmp_path)
    # and the browser asked nothing of any other host
    assert off_host == []


def test_the_whole_photo_is_in_view_and_zoom_stays_available(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    # given a landscape photo and a portrait one synced in (a scratch along a photo's
    # edge is as much a scratch as one in its middle)
    task_ids = landscape_and_portrait(settings, client, project_id, tmp_path)
    url, token = ls_settings.url, ls_settings.token.get_secret_value()
    seen: dict[str, PhotoOnCanvas] = {}
    zoomed: dict[int, tuple[Rect, Rect]] = {}
    with chromium() as browser, labeller_page(browser, url, token) as page:
        # when a labeller opens each task from the data manager in a 1280x800 window
        for task_id in task_ids:
            open_task(page, url, project_id, task_id)
            seen[f"task view, task {task_id}"] = photo_on_canvas(page)
            page.screenshot(path=tmp_path / f"task-view-{task_id}.png")
            # and zooms in with the mouse wheel
            zoomed[task_id] = (image_rect(page), wheel_zoom(page))
        # and labels the project's tasks in the labelling stream, skipping to the next
        open_stream(page, url, project_id)
        for n in range(len(task_ids)):
            if n:
                skip_to_next(page)
            seen[f"stream, task {n + 1} of {len(task_ids)}"] = photo_on_canvas(page)
            page.screenshot(path=tmp_path / f"stream-{n}.png")
    # then the stream showed both photos, the landscape one and the portrait one
    in_stream = [where for view, where in seen.items() if view.startswith("stream")]
    assert {w.photo.width > w.photo.height for w in in_stream} == {True, False}, seen
    # and in both views, each photo is drawn whole on the canvas that shows it (no edge
    # cut off, each within 1.5 px) and fitted to it (as wide or as tall, not shrunk)
    cut_off = {view: (where.cut, where) for view, where in seen.items() if not where.whole}
    assert cut_off == {}, (cut_off, tmp_path)
    shrunk = {view: where for view, where in seen.items() if not where.photo.fills(where.canvas)}
    assert shrunk == {}, (shrunk, tmp_path)
    # and the mouse wheel still zooms the photo in
    for task_id, (before, after) in zoomed.items():
        assert after.width > before.width * 1.05, (task_id, before, after)
        assert after.height > before.height * 1.05, (task_id, before, after)


def test_data_manager_shows_what_a_labeller_needs(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    tmp_path: Path,
) -> None:
    # given a bootstrapped project with a task synced in with a prediction
    put_feedback_image(settings, metal_tag_images(1, skip=6)[0], [0.4])
    sync_in(settings, client, project_id, progress=lambda _: None)
    url, token = ls_settings.url, ls_settings.token.get_secret_value()
    # when a labeller opens the project's data manager
    with chromium() as browser, labeller_page(browser, url, token) as page:
        columns = data_manager_columns(page, url, project_id)
        page.screenshot(path=tmp_path / "data-manager.png")
    # then the table shows the task, its image, where it came from and the model's score,
    # and not qcloop's bookkeeping
    assert {"ID", "image", "name", "source", "reason", "Prediction score"} <= set(columns)
    assert not {"raw_key", "sha256", "width", "height", "captured_at"} & set(columns), columns

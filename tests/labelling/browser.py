"""Label Studio in a real browser, as a labeller sees it: headless Chromium for the tests.

Debian's ``chromium`` (``apt-get install -y chromium``; ``make test`` installs it through
``scripts/test-prerequisites.sh``) driven by the ``playwright`` package of the ``test``
extra with ``executable_path``: playwright never downloads a browser here (no
``playwright install``), and the browser asks nothing of outside services (the flags
below; any request off the Label Studio host is aborted and recorded).

Reusable by any labelling test (the editor, the data manager, an ML backend's boxes)::

    with chromium() as browser, labeller_page(browser, url, token) as page:
        open_task(page, url, project_id, task_id)
        assert label_choice_in_view(page, "scratch").visible
        assert box_drawn(page, result["value"]) > 0.9  # a prediction's or annotation's box
        page.screenshot(path=tmp_path / "task.png")
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

try:
    from playwright.sync_api import Browser, Page, Route, ViewportSize, sync_playwright
except ImportError as exc:  # the test extra brings it; nothing to download at test time
    raise ImportError(
        "the browser tests need playwright (the test extra): "
        ".venv/bin/pip install -c constraints.txt -e '.[test]'"
    ) from exc

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_MISSING = (
    "Chromium is not installed: `make test` installs it (scripts/test-prerequisites.sh), "
    "or apt-get install -y chromium (or set QCLOOP_CHROMIUM to a Chromium binary)"
)
LABEL_COLOUR = (0xE4, 0x57, 0x2E)  # the scratch label's colour in labeling_config.xml
READY_S = 30.0


@dataclass(frozen=True)
class Rect:
    """A box on the page, in CSS pixels from the viewport's top left."""

    x: float
    y: float
    width: float
    height: float

    @property
    def bottom(self) -> float:
        return self.y + self.height

    @property
    def right(self) -> float:
        return self.x + self.width

    def inside(self, width: float, height: float) -> bool:
        """Whole within a viewport of ``width`` x ``height``."""
        return self.x >= 0 and self.y >= 0 and self.right <= width and self.bottom <= height

    def within(self, outer: Rect, slack: float = 1.5) -> bool:
        """Whole within ``outer``, each edge up to ``slack`` px past it (sub-pixel rounding)."""
        return (
            self.x >= outer.x - slack
            and self.y >= outer.y - slack
            and self.right <= outer.right + slack
            and self.bottom <= outer.bottom + slack
        )

    def fills(self, outer: Rect, slack: float = 2.0) -> bool:
        """As wide or as tall as ``outer``, within ``slack`` px: fitted to it, not shrunk."""
        return abs(self.width - outer.width) <= slack or abs(self.height - outer.height) <= slack


@dataclass(frozen=True)
class InView:
    """Where the label choice and the image are, and whether a click would reach the label."""

    label: Rect
    image: Rect  # the editor's canvas (image and regions)
    visible: bool  # the label lies within the viewport and nothing covers its centre


def chromium_path() -> str:
    """``$QCLOOP_CHROMIUM`` or ``chromium`` on the PATH; the test fails saying what to install."""
    path = os.environ.get("QCLOOP_CHROMIUM") or shutil.which("chromium")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(CHROMIUM_MISSING)
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium, closed when the block ends."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def labeller_page(
    browser: Browser,
    url: str,
    admin_token: str,
    off_host: list[str] | None = None,
    *,
    also_allow: Sequence[str] = (),
) -> Iterator[Page]:
    """A 1280x800 page of a new labeller, signed up through the organisation's invite link.

    Label Studio's admin password is never written down (``qcloop_labelling.server``); a
    labeller joins as a team's labellers do, and sees what they see. Requests to any host
    but Label Studio's and those of the base URLs in ``also_allow`` (the S3 endpoint that
    presigned URLs name) are aborted and appended to ``off_host``. Label Studio's service
    worker is blocked, so that what it would fetch goes through that check too.
    """
    invite = requests.get(
        f"{url}/api/invite", headers={"Authorization": f"Token {admin_token}"}, timeout=30
    )
    invite.raise_for_status()
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    hosts = {urlsplit(u).netloc for u in (url, *also_allow)}
    context.route("**/*", _known_hosts_only(hosts, [] if off_host is None else off_host))
    page = context.new_page()
    try:
        page.goto(f"{url}{invite.json()['invite_url']}")
        page.fill("#email", f"labeller-{uuid.uuid4().hex[:8]}@qcloop.local")
        page.fill("#password", uuid.uuid4().hex)
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/user/signup" not in u, timeout=READY_S * 1000)
        yield page
    finally:
        context.close()


def _known_hosts_only(hosts: set[str], off_host: list[str]) -> Any:
    def handle(route: Route) -> None:
        target = urlsplit(route.request.url)
        if target.scheme in ("http", "https", "ws", "wss") and target.netloc not in hosts:
            off_host.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    return handle


def open_task(page: Page, url: str, project_id: int, task_id: int) -> None:
    """Open a task in the editor and wait until its image and label choice are shown."""
    page.goto(f"{url}/projects/{project_id}/data?task={task_id}")
    page.wait_for_selector(".lsf-label", timeout=READY_S * 1000)
    page.wait_for_function(
        "() => { const i = document.querySelector('.lsf-image img');"
        " return i && i.complete && i.naturalWidth > 0"
        " && document.querySelector('.konvajs-content'); }",
        timeout=READY_S * 1000,
    )
    page.wait_for_load_state("networkidle")


def label_choice_in_view(page: Page, value: str) -> InView:
    """Where the editor shows the label ``value`` and its image, and whether it is in view."""
    found = page.evaluate(
        """(value) => {
          const rect = (e) => { const r = e.getBoundingClientRect();
            return {x: r.x, y: r.y, width: r.width, height: r.height}; };
          const label = [...document.querySelectorAll('.lsf-label')]
            .find((e) => e.querySelector('.lsf-label__text')?.textContent === value);
          const stage = document.querySelector('.konvajs-content');
          if (!label || !stage) return null;
          const r = label.getBoundingClientRect();
          const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
          return {label: rect(label), image: rect(stage), hit: !!hit && label.contains(hit)};
        }""",
        value,
    )
    if found is None:
        raise AssertionError(f"the editor shows no label '{value}' or no image")
    label = Rect(**found["label"])
    inside = label.inside(VIEWPORT["width"], VIEWPORT["height"])
    return InView(label, Rect(**found["image"]), visible=inside and found["hit"])


def image_rect(page: Page) -> Rect:
    """Where the editor draws the whole image (it may reach past the visible canvas)."""
    found = page.evaluate(
        "() => { const r = document.querySelector('.lsf-image img').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; }"
    )
    return Rect(**found)


def box_drawn(
    page: Page,
    value: dict[str, float],
    colour: tuple[int, int, int] = LABEL_COLOUR,
    *,
    settle_s: float = 10.0,
) -> float:
    """Share of the outline of a Label Studio box (``value``: x, y, width, height in percent
    of the image) that the editor draws in ``colour``, where the canvas shows it: ~1 when the
    box is drawn there, ~0 when not. Read from the screen's pixels, so it sees what a
    labeller sees (regions are drawn on a canvas, not in the DOM). Waits up to ``settle_s``.
    """
    deadline = time.monotonic() + settle_s
    while True:
        share = _outline_share(page, value, colour)
        if share > 0.9 or time.monotonic() > deadline:
            return share
        time.sleep(0.5)


def _outline_share(page: Page, value: dict[str, float], colour: tuple[int, int, int]) -> float:
    pixels = np.asarray(Image.open(BytesIO(page.screenshot())).convert("RGB")).astype(int)
    img, stage = image_rect(page), _stage(page)
    x0 = img.x + img.width * value["x"] / 100
    y0 = img.y + img.height * value["y"] / 100
    x1 = x0 + img.width * value["width"] / 100
    y1 = y0 + img.height * value["height"] / 100
    near = np.abs(pixels - np.array(colour)).sum(axis=2) < 60
    samples: list[bool] = []
    for y in (y0, y1):  # top and bottom edges, where the canvas shows them
        if stage.y <= y <= stage.bottom:
            for x in np.arange(max(x0, stage.x) + 2, min(x1, stage.right) - 2, 2.0):
                samples.append(_hit(near, x, y, vertical=True))
    for x in (x0, x1):  # left and right edges
        if stage.x <= x <= stage.right:
            for y in np.arange(max(y0, stage.y) + 2, min(y1, stage.bottom) - 2, 2.0):
                samples.append(_hit(near, x, y, vertical=False))
    return sum(samples) / len(samples) if samples else 0.0


@dataclass(frozen=True)
class PhotoOnCanvas:
    """Where the editor draws the photo, and the canvas that shows it (what is outside the
    canvas is cut off: a labeller does not see it)."""

    photo: Rect
    canvas: Rect

    @property
    def whole(self) -> bool:
        """Every edge of the photo lies within the canvas: nothing of it is cut off."""
        return self.photo.within(self.canvas)

    @property
    def cut(self) -> dict[str, float]:
        """CSS px of the photo past each edge of the canvas (0 where none)."""
        photo, canvas = self.photo, self.canvas
        return {
            "left": round(max(canvas.x - photo.x, 0), 1),
            "top": round(max(canvas.y - photo.y, 0), 1),
            "right": round(max(photo.right - canvas.right, 0), 1),
            "bottom": round(max(photo.bottom - canvas.bottom, 0), 1),
        }


def photo_on_canvas(page: Page) -> PhotoOnCanvas:
    """The drawn photo and the visible canvas, once the editor's layout has settled (its
    tool bar comes in after the photo; a resize is handled a frame or two later)."""
    settle(page)
    return PhotoOnCanvas(image_rect(page), _stage(page))


def settle(page: Page, frames: int = 10) -> None:
    """Wait ``frames`` animation frames, and for the network to be idle."""
    page.evaluate(
        """(n) => new Promise((done) => {
          const next = (k) => (k ? requestAnimationFrame(() => next(k - 1)) : setTimeout(done, 50));
          next(n);
        })""",
        frames,
    )
    page.wait_for_load_state("networkidle")


def wheel_zoom(page: Page, delta_y: float = -100) -> Rect:
    """Zoom as a labeller does with the mouse wheel over the photo's centre (ctrl held, as
    Label Studio asks; a plain wheel pans a zoomed photo); returns where the photo is drawn
    then (larger when zoomed in: ``delta_y`` < 0)."""
    canvas = _stage(page)
    page.mouse.move(canvas.x + canvas.width / 2, canvas.y + canvas.height / 2)
    page.keyboard.down("Control")
    try:
        page.mouse.wheel(0, delta_y)
    finally:
        page.keyboard.up("Control")
    settle(page)
    return image_rect(page)


def skip_to_next(page: Page) -> None:
    """Skip the labelling stream's task (the editor's Skip button) and wait for the next
    task's photo to be shown."""
    shown = page.evaluate("() => document.querySelector('.lsf-image img').src")
    page.get_by_role("button", name="Skip").click()
    page.wait_for_function(
        "(before) => { const i = document.querySelector('.lsf-image img');"
        " return i && i.src !== before && i.complete && i.naturalWidth > 0"
        " && document.querySelector('.konvajs-content'); }",
        arg=shown,
        timeout=READY_S * 1000,
    )
    page.wait_for_load_state("networkidle")


def _stage(page: Page) -> Rect:
    found = page.evaluate(
        "() => { const r = document.querySelector('.konvajs-content').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; }"
    )
    return Rect(**found)


def _hit(near: np.ndarray, x: float, y: float, *, vertical: bool) -> bool:
    """A pixel of the colour within 3 px of (x, y), across the edge."""
    col, row = round(x), round(y)
    across = (
        near[max(row - 3, 0) : row + 4, col] if vertical else near[row, max(col - 3, 0) : col + 4]
    )
    return bool(across.any())


def data_manager_columns(page: Page, url: str, project_id: int) -> list[str]:
    """Titles of the columns the data manager's task table shows (icon-only ones as '')."""
    page.goto(f"{url}/projects/{project_id}/data")
    page.wait_for_selector(".lsf-table-head .lsf-th", timeout=READY_S * 1000)
    page.wait_for_load_state("networkidle")
    titles: list[str] = page.eval_on_selector_all(
        ".lsf-table-head .lsf-th",
        "(cells) => cells.map((c) => (c.innerText || '').split('\\n')[0].trim())",
    )
    return titles

"""Synthetic metal-tag images with scratches and exact boxes.

So that the quickstart runs on a fresh clone with no outside data, and so that
the edge agent has a camera to look at. A "shot" is one camera frame of a tray
with four tag blanks; like the real data it is cut into four crops
(``<shot>-cropped-<quadrant>.jpg``), which share a capture group.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Box = tuple[float, float, float, float]
QUADRANTS = ("left-top", "right-top", "left-bottom", "right-bottom")
CLASS_NAMES = ["scratch"]


def _brushed_metal(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Grey background with horizontal brushing streaks and a lighting gradient."""
    base = rng.uniform(95, 125)
    streaks = rng.normal(0, 6, size=(height, 1)) + rng.normal(0, 3, size=(height, width))
    streaks = np.repeat(rng.normal(0, 4, size=(1, width // 8 + 1)), 8, axis=1)[:, :width] + streaks
    yy, xx = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * math.pi)
    light = 18 * (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    return np.asarray(base + streaks + light, dtype=np.float32)


def _tag_mask(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, Box]:
    """Mask of a tag blank (rounded plate, 1.0) with a hole (0.0); and the plate outline."""
    mx, my = rng.uniform(0.06, 0.12) * w, rng.uniform(0.08, 0.16) * h
    plate = (mx, my, w - mx, h - my)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    draw.rounded_rectangle(plate, radius=int(0.12 * h), fill=255)
    cx, cy, r = plate[0] + 0.12 * w, (plate[1] + plate[3]) / 2, 0.05 * h
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=0)
    blurred = mask.filter(ImageFilter.GaussianBlur(radius=1.2))
    return np.asarray(blurred, dtype=np.float32) / 255.0, plate


def _scratch(draw: ImageDraw.ImageDraw, rng: np.random.Generator, plate: Box, shade: int) -> Box:
    """Draw one thin, low-contrast scratch inside the plate; return its exact box."""
    x1, y1, x2, y2 = plate
    length = rng.uniform(0.12, 0.45) * (x2 - x1)
    angle = rng.uniform(-math.pi / 3, math.pi / 3) + (math.pi / 2 if rng.random() < 0.3 else 0)
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    cx = rng.uniform(x1 + abs(dx) + 4, x2 - abs(dx) - 4)
    cy = rng.uniform(y1 + abs(dy) + 4, y2 - abs(dy) - 4)
    points = [(cx - dx, cy - dy)]
    for t in (0.33, 0.66, 1.0):  # a slightly wavy stroke
        jitter = rng.normal(0, 1.5)
        points.append((cx - dx + 2 * dx * t + jitter, cy - dy + 2 * dy * t - jitter))
    width = int(rng.integers(1, 3))
    tone = int(np.clip(shade + rng.choice([-1, 1]) * rng.uniform(35, 60), 0, 255))
    draw.line(points, fill=tone, width=width)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    pad = width + 2
    return (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)


def render_tag(
    rng: np.random.Generator, width: int = 450, height: int = 300, scratches: int | None = None
) -> tuple[Image.Image, list[Box]]:
    """One grayscale crop with a tag blank and 0-3 scratches; boxes in pixels (x1, y1, x2, y2)."""
    metal = _brushed_metal(rng, width, height)
    mask, plate = _tag_mask(rng, width, height)
    pixels = metal * (0.55 + 0.45 * (1 - mask)) + mask * rng.uniform(95, 125)
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    x1, y1, x2, y2 = (int(v) for v in plate)
    shade = int(np.mean(np.asarray(canvas)[y1:y2, x1:x2]))
    count = int(rng.choice([0, 1, 1, 2, 2, 3])) if scratches is None else scratches
    draw = ImageDraw.Draw(canvas)
    boxes = [_clip(_scratch(draw, rng, plate, shade), width, height) for _ in range(count)]
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=0.6))
    noise = rng.normal(0, 3, size=(height, width))
    out = np.clip(np.asarray(canvas, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L").convert("RGB"), boxes


def _clip(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Encode as JPEG."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def yolo_lines(boxes: list[Box], width: int, height: int, class_id: int = 0) -> str:
    """YOLO label text (``cls cx cy w h`` normalised) for pixel boxes."""
    lines = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(
            f"{class_id} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    return "".join(line + "\n" for line in lines)


def generate_yolo_dataset(
    out_dir: Path, shots: int = 16, seed: int = 0, width: int = 450, height: int = 300
) -> Path:
    """Write a YOLO folder (images/, labels/, classes.txt) of ``shots`` x 4 crops."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    rng = np.random.default_rng(seed)
    for shot in range(shots):
        for quadrant in QUADRANTS:
            stem = f"synthetic-shot-{seed:03d}-{shot:04d}-cropped-{quadrant}"
            image, boxes = render_tag(rng, width, height)
            (out_dir / "images" / f"{stem}.jpg").write_bytes(jpeg_bytes(image))
            (out_dir / "labels" / f"{stem}.txt").write_text(yolo_lines(boxes, width, height))
    return out_dir


class SimulatedCamera:
    """An endless, deterministic camera of synthetic tags: ``capture()`` gives a JPEG."""

    def __init__(self, seed: int = 0, width: int = 450, height: int = 300) -> None:
        self.width, self.height = width, height
        self._rng = np.random.default_rng(seed)
        self.frames = 0

    def capture_with_boxes(self) -> tuple[bytes, list[Box]]:
        """Next frame as JPEG bytes, with the true scratch boxes."""
        image, boxes = render_tag(self._rng, self.width, self.height)
        self.frames += 1
        return jpeg_bytes(image), boxes

    def capture(self) -> bytes:
        """Next frame as JPEG bytes."""
        return self.capture_with_boxes()[0]

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.capture()

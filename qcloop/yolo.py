"""Reading and validating a YOLO-layout folder (the layout of shared/datasets/metal-tags).

    <folder>/images/<stem>.jpg|.jpeg|.png
    <folder>/labels/<stem>.txt      one ``class cx cy w h`` per line, normalised; empty = negative
    <folder>/classes.txt            class names, one per line (optional if given)

Every problem is collected and reported at once, each naming the file and
line, so a user fixes the folder in one go. Symbolic links are refused, never
followed (a link's target is not echoed in a message), and an image over Pillow's
decompression-bomb limit is reported like any unreadable one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from qcloop.errors import DatasetError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_CAPTURE_RE = re.compile(r"^(?P<group>.+)-cropped-[a-z]+(?:-[a-z]+)?$")
MAX_REPORTED = 20
SYMLINK = "a symbolic link, not followed; copy the file itself into the folder"


def listed(problems: list[str]) -> str:
    """The first ``MAX_REPORTED`` problems, one per indented line, and how many more."""
    more = len(problems) - MAX_REPORTED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return "".join(f"\n  {p}" for p in problems[:MAX_REPORTED]) + tail


@dataclass(frozen=True)
class YoloBox:
    """A normalised YOLO box."""

    class_id: int
    cx: float
    cy: float
    w: float
    h: float

    def line(self) -> str:
        """The label line."""
        return f"{self.class_id} {self.cx:.6f} {self.cy:.6f} {self.w:.6f} {self.h:.6f}"


@dataclass(frozen=True)
class YoloItem:
    """One image of a YOLO folder with its boxes."""

    image: Path
    label: Path
    width: int
    height: int
    boxes: tuple[YoloBox, ...]

    @property
    def stem(self) -> str:
        """File stem shared by image and label."""
        return self.image.stem


def capture_group(stem: str) -> str:
    """Capture id of an image: crops ``<shot>-cropped-<quadrant>`` share the shot."""
    match = _CAPTURE_RE.match(stem)
    return match.group("group") if match else stem


def read_class_names(folder: Path) -> list[str]:
    """Class names from ``classes.txt``."""
    path = folder / "classes.txt"
    if path.is_symlink():
        raise DatasetError(f"{path}: {SYMLINK}")
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing; write the class names in it, one per line, in the order of "
            "the class ids of labels/ (0 first)"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: empty; list the class names one per line")
    return names


def parse_label_file(path: Path, n_classes: int) -> tuple[tuple[YoloBox, ...], list[str]]:
    """Boxes of one label file, and the problems found (file:line: what)."""
    boxes, problems = [], []
    for no, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{no}"
        parts = raw.split()
        try:
            cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
            if len(parts) != 5:
                raise ValueError
        except (ValueError, IndexError):
            problems.append(f"{where}: expected 'class cx cy w h', got '{raw.strip()}'")
            continue
        if not 0 <= cls < n_classes:
            problems.append(f"{where}: unknown class id {cls} (classes.txt has {n_classes})")
            continue
        if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1):
            problems.append(f"{where}: box {cx} {cy} {w} {h} is outside 0..1 or has no area")
            continue
        if (
            cx - w / 2 < -1e-3
            or cx + w / 2 > 1 + 1e-3
            or cy - h / 2 < -1e-3
            or cy + h / 2 > 1 + 1e-3
        ):
            problems.append(f"{where}: box {cx} {cy} {w} {h} reaches outside the image")
            continue
        boxes.append(YoloBox(cls, cx, cy, w, h))
    return tuple(boxes), problems


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of a readable image; ``DatasetError`` if it is not one."""
    try:
        with Image.open(path) as img:
            img.load()
            size: tuple[int, int] = img.size
            return size
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: too many pixels to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ImportError, ValueError) as exc:
        # ImportError: ultralytics, once imported, routes unknown formats to an optional plugin
        raise DatasetError(f"{path}: unreadable image ({exc}); replace or remove it") from None


def scan_yolo_folder(
    folder: Path, class_names: list[str] | None = None
) -> tuple[list[str], list[YoloItem]]:
    """Validate a YOLO folder; return class names and items, or raise one ``DatasetError``."""
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", folder / "labels"
    for needed in (images_dir, labels_dir):
        if not needed.is_dir():
            raise DatasetError(f"{needed}: missing; a YOLO folder has images/ and labels/")
    names = class_names or read_class_names(folder)
    files = [p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    files += sorted(labels_dir.glob("*.txt"))
    problems = [f"{p}: {SYMLINK}" for p in files if p.is_symlink()]
    linked = {p.stem for p in files if p.is_symlink()}
    files = [p for p in files if not p.is_symlink()]
    images = {p.stem: p for p in files if p.parent == images_dir}
    labels = {p.stem: p for p in files if p.parent == labels_dir}
    problems += [
        f"{labels[s]}: label without image (no images/{s}.jpg); add the image or delete the label"
        for s in sorted(labels.keys() - images.keys() - linked)
    ]
    problems += [
        f"{images[s]}: image without label; add labels/{s}.txt (empty if it has no defect)"
        for s in sorted(images.keys() - labels.keys() - linked)
    ]
    items = []
    for stem in sorted(images.keys() & labels.keys()):
        boxes, bad = parse_label_file(labels[stem], len(names))
        problems += bad
        try:
            width, height = image_size(images[stem])
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        items.append(YoloItem(images[stem], labels[stem], width, height, boxes))
    if problems:
        raise DatasetError(
            f"{folder}: {len(problems)} problem(s) in the YOLO folder:{listed(problems)}"
        )
    if not items:
        raise DatasetError(f"{folder}: no labelled images found under images/")
    return names, items


def letterbox_shape(
    source: tuple[int, int], size: tuple[int, int], stride: int = 0
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(scaled width, height) and (canvas width, height) of a ``source`` frame letterboxed.

    ``size`` is (height, width). The frame is scaled to fit keeping its aspect ratio;
    the canvas is ``size``, or with ``stride`` the smallest multiple of it around the
    scaled frame in each direction (ultralytics' ``LetterBox(auto=True)``, the edge
    agent's rect input, the pipeline's latency figure of a dynamic-input model).
    """
    height, width = size
    source_w, source_h = source
    ratio = min(height / source_h, width / source_w)
    new_w = max(round(source_w * ratio), 1)
    new_h = max(round(source_h * ratio), 1)
    if stride > 0:
        width = new_w + (width - new_w) % stride
        height = new_h + (height - new_h) % stride
    return (new_w, new_h), (width, height)

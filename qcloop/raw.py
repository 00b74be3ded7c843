"""Unlabelled images into the raw store: the way in for new captures and manual uploads.

``add_raw_images`` takes files and folders (a folder: every ``.jpg``/``.jpeg``/``.png`` in
it and its subfolders, links not followed), checks every image first and then puts each
one under its content address with a sidecar (``reason = "manual"``, ``source`` as
given, ``captured_at`` the file's modification time, no predictions), exactly as the
edge agent puts its feedback, so ``qcloop labelling sync-in`` makes tasks of them.

An image already in the store (same bytes, any name) is skipped and keeps its sidecar,
so edge feedback keeps its predictions. A bad file (unreadable, not a JPEG or PNG, a
link) stops the whole add before anything is written, naming every bad file, unless
``skip_bad``: then the good ones go in and the bad ones are reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from qcloop.contracts import RawImageSidecar
from qcloop.errors import DatasetError
from qcloop.storage import ObjectStore, put_raw_image, raw_key, sha256_bytes, sidecar_key
from qcloop.yolo import IMAGE_EXTS, SYMLINK, listed

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
FORMATS = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png")}
DEFAULT_SOURCE = "manual"
REPORT_EVERY = 50


@dataclass(frozen=True)
class BadFile:
    """A file that cannot go into the raw store, and what to do about it."""

    path: str
    reason: str

    def line(self) -> str:
        """``path: reason``."""
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class RawAddReport:
    """What one add did: keys added, duplicates skipped, files refused."""

    source: str
    store: str
    found: int
    added: int
    duplicates: int
    ignored: int
    keys: tuple[str, ...] = field(repr=False)
    bad: tuple[BadFile, ...] = ()


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Image files named or inside the folders of ``paths``, and the other files of folders.

    A path that does not exist is a ``DatasetError``. Named files are taken whatever
    their extension (their content decides); in folders only image extensions count.
    """
    files: list[Path] = []
    ignored: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir() and not path.is_symlink():
            for root, dirs, names in os.walk(path):  # links to folders are not followed
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    image = Path(root) / name
                    (files if image.suffix.lower() in IMAGE_EXTS else ignored).append(image)
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise DatasetError(f"{path}: no such file or folder; name image files or folders")
    return files, ignored


def describe_image(path: Path, source: str) -> RawImageSidecar | BadFile:
    """The sidecar ``path`` gets in the raw store, or why it cannot go there."""
    if path.is_symlink():
        return BadFile(str(path), SYMLINK)
    try:
        data = path.read_bytes()
        with Image.open(path) as img:
            img.load()
            fmt, (width, height) = img.format or "", img.size
    except Image.DecompressionBombError:
        return BadFile(str(path), "too many pixels to decode safely; downscale it")
    except UnidentifiedImageError:
        return BadFile(str(path), "not an image Pillow can read; replace or remove it")
    except (OSError, SyntaxError, ImportError, ValueError) as exc:
        return BadFile(str(path), f"unreadable image ({exc}); replace or remove it")
    if fmt not in FORMATS:
        return BadFile(str(path), f"a {fmt or 'unknown'} image; convert it to JPEG or PNG")
    ext, content_type = FORMATS[fmt]
    digest = sha256_bytes(data)
    return RawImageSidecar(
        key=raw_key(digest, ext),
        sha256=digest,
        content_type=content_type,
        width=width,
        height=height,
        source=source,
        captured_at=datetime.fromtimestamp(path.stat().st_mtime, timezone.utc),
        reason="manual",
        original_name=path.name,
    )


def add_raw_images(
    store: ObjectStore,
    paths: Iterable[Path],
    *,
    source: str = DEFAULT_SOURCE,
    skip_bad: bool = False,
    progress: Progress = log.info,
) -> RawAddReport:
    """Put the images of ``paths`` into the raw store; see the module's docstring."""
    if not source.strip():
        raise DatasetError("--source: give a name (camera, line, or who uploaded the images)")
    files, ignored = collect_files(paths)
    if ignored:
        progress(f"ignoring {len(ignored)} files that are not images, e.g. {ignored[0]}")
    if not files:
        raise DatasetError("no .jpg, .jpeg or .png image in what was given; name images")
    progress(f"checking {len(files)} images")
    checked = [(path, describe_image(path, source)) for path in files]
    bad = tuple(item for _, item in checked if isinstance(item, BadFile))
    if bad and not skip_bad:
        lines = listed([b.line() for b in bad])
        raise DatasetError(
            f"{len(bad)} of {len(files)} files cannot go into the raw store, nothing was added; "
            f"fix or remove them (or add the others with --skip-bad):{lines}"
        )
    good = [(path, item) for path, item in checked if isinstance(item, RawImageSidecar)]
    keys: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    progress(f"adding {len(good)} images to {store.url('raw/')}")
    for n, (path, sidecar) in enumerate(good, start=1):
        if sidecar.sha256 in seen or store.exists(sidecar_key(sidecar.key)):
            duplicates += 1  # already there: its sidecar (edge predictions) stays as it is
        else:
            _put(store, path, sidecar)
            keys.append(sidecar.key)
        seen.add(sidecar.sha256)
        if n % REPORT_EVERY == 0 or n == len(good):
            progress(f"  {n}/{len(good)}: {len(keys)} added, {duplicates} already there")
    for item in bad:
        progress(f"  not added: {item.line()}")
    return RawAddReport(
        source=source,
        store=store.url("raw/"),
        found=len(files),
        added=len(keys),
        duplicates=duplicates,
        ignored=len(ignored),
        keys=tuple(keys),
        bad=bad,
    )


def _put(store: ObjectStore, path: Path, sidecar: RawImageSidecar) -> None:
    data = path.read_bytes()
    if sha256_bytes(data) != sidecar.sha256:
        raise DatasetError(f"{path}: changed while being added; add it again once it is written")
    put_raw_image(store, data, sidecar)

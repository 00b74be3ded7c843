"""Where frames come from: a hot folder, or the simulated camera.

A source hands out ``Frame``s one at a time and is told how each ended:
``done`` (inferred) or ``reject`` (not an image, too large, empty). Sources never
raise on a bad file: they log it and move on, so the inspection loop keeps running.
A frame the source already refuses (a file too large to read, one that stays
empty) comes with its ``rejected`` reason, and the loop sets it aside in order.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from edge_agent.config import SourceConfig

log = logging.getLogger(__name__)

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp", "~")


@dataclass(frozen=True)
class Frame:
    """One image to inspect: its name (file path or camera frame id) and bytes."""

    name: str
    data: bytes
    path: Path | None = None
    rejected: str | None = None  # why the source refuses it (then ``data`` is empty)


class FrameSource(Protocol):
    """What the agent needs from a source of frames."""

    def next_frame(self, timeout: float) -> Frame | None:
        """The next frame, or None if none arrived within ``timeout`` seconds."""

    def done(self, frame: Frame) -> None:
        """The frame was inferred: apply the processed-file policy."""

    def reject(self, frame: Frame, reason: str) -> None:
        """The frame cannot be inspected (``reason``): set it aside."""


def is_temporary(path: Path) -> bool:
    """Names writers use while a file is incomplete (hidden, ``.tmp``, ``.part``, ...)."""
    name = path.name.lower()
    return name.startswith(".") or name.startswith("~") or name.endswith(TEMP_SUFFIXES)


def unique_target(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-N.ext`` if that is taken."""
    target = folder / name
    stem, suffix = os.path.splitext(name)
    for n in itertools.count(1):
        if not target.exists():
            return target
        target = folder / f"{stem}-{n}{suffix}"
    raise AssertionError("unreachable")


@dataclass
class FolderSource:
    """A hot folder: each complete file is handed out once, oldest first.

    A file is complete when its size and mtime did not change between two scans
    and its name is not a temporary one. After inference it is kept, moved to
    ``processed_dir`` or deleted (``policy``); a non-image goes to ``rejected_dir``,
    and so does a file over ``max_file_bytes`` (not read) or one still empty after
    ``empty_settle_s``.
    ``next_frame`` may run on the prefetch thread while ``done``/``reject`` run on
    the inspection thread: the bookkeeping of handled files is under a lock.
    """

    path: Path
    policy: Literal["keep", "move", "delete"] = "move"
    processed_dir: Path | None = None
    rejected_dir: Path | None = None
    poll_interval_s: float = 0.5
    max_file_bytes: int = 64 * 1024 * 1024
    empty_settle_s: float = 10.0
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)
    _empty_since: dict[Path, float] = field(default_factory=dict, repr=False)
    _handled: set[tuple[Path, int, int]] = field(default_factory=set, repr=False)
    _ready: list[Path] = field(default_factory=list, repr=False)
    _last_scan: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.processed_dir = Path(self.processed_dir or self.path / "processed")
        self.rejected_dir = Path(self.rejected_dir or self.path / "rejected")
        self.path.mkdir(parents=True, exist_ok=True)

    def next_frame(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            while self._ready:
                frame = self._read(self._ready.pop(0))
                if frame is not None:
                    return frame
            wait = self._last_scan + self.poll_interval_s - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait > deadline:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    return None
                time.sleep(wait)
            self._scan()
            if not self._ready and time.monotonic() >= deadline:
                return None

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        current: dict[Path, tuple[int, int]] = {}
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            log.error("cannot list hot folder", extra={"path": str(self.path), "error": str(exc)})
            return
        for entry in entries:
            path = Path(entry.path)
            if is_temporary(path) or not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat()
            current[path] = (stat.st_size, stat.st_mtime_ns)
        now = time.monotonic()
        self._empty_since = {
            p: self._empty_since.get(p, now) for p, sig in current.items() if sig[0] == 0
        }
        stable = [
            p
            for p, sig in current.items()
            if self._seen.get(p) == sig
            and (sig[0] > 0 or now - self._empty_since[p] >= self.empty_settle_s)
        ]
        self._seen = current
        with self._lock:
            fresh = [p for p in stable if (p, *current[p]) not in self._handled]
        self._ready = sorted(fresh, key=lambda p: (current[p][1], p.name))

    def _read(self, path: Path) -> Frame | None:
        try:
            stat = path.stat()
            too_large = stat.st_size > self.max_file_bytes
            data = b"" if too_large else path.read_bytes()
        except OSError as exc:  # vanished or unreadable: not ours to crash on
            log.warning("cannot read file", extra={"path": str(path), "error": str(exc)})
            return None
        with self._lock:
            self._handled.add((path, stat.st_size, stat.st_mtime_ns))
        rejected = None
        if too_large:
            rejected = f"{stat.st_size} bytes > source.max_file_bytes {self.max_file_bytes}"
        elif not data:
            rejected = f"empty file (0 bytes for {self.empty_settle_s} s)"
        return Frame(name=str(path), data=data, path=path, rejected=rejected)

    def done(self, frame: Frame) -> None:
        if frame.path is None or self.policy == "keep":
            return
        try:
            if self.policy == "delete":
                frame.path.unlink(missing_ok=True)
                self._forget(frame.path)
            else:
                self._move(frame.path, self.processed_dir)
        except OSError as exc:
            log.error(
                "cannot apply processed policy", extra={"path": frame.name, "error": str(exc)}
            )

    def reject(self, frame: Frame, reason: str) -> None:
        log.warning("frame set aside", extra={"path": frame.name, "error": reason})
        if frame.path is None:
            return
        try:
            self._move(frame.path, self.rejected_dir)
        except OSError as exc:
            log.error("cannot move rejected file", extra={"path": frame.name, "error": str(exc)})

    def _move(self, path: Path, folder: Path | None) -> None:
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, unique_target(folder, path.name))
        self._forget(path)

    def _forget(self, path: Path) -> None:
        """The file left the folder: a new file of that name is new work."""
        with self._lock:
            self._handled = {h for h in self._handled if h[0] != path}


class SimulatedCameraSource:
    """Frames from ``qcloop.synthetic.SimulatedCamera``, one every ``interval_s``."""

    def __init__(self, seed: int = 0, interval_s: float = 1.0) -> None:
        from qcloop.synthetic import SimulatedCamera  # only the simulated source needs it

        self.seed = seed
        self.interval_s = interval_s
        self._camera = SimulatedCamera(seed=seed)
        self._count = 0
        self._next_at = time.monotonic()

    def __repr__(self) -> str:
        return f"SimulatedCameraSource(seed={self.seed}, interval_s={self.interval_s})"

    def next_frame(self, timeout: float) -> Frame | None:
        wait = self._next_at - time.monotonic()
        if wait > timeout:
            time.sleep(max(timeout, 0.0))
            return None
        time.sleep(max(wait, 0.0))
        self._next_at = max(self._next_at, time.monotonic() - self.interval_s) + self.interval_s
        self._count += 1
        return Frame(
            name=f"simulated-{self.seed}-{self._count:06d}.jpg", data=self._camera.capture()
        )

    def done(self, frame: Frame) -> None:
        """Nothing to clean up for a simulated frame."""

    def reject(self, frame: Frame, reason: str) -> None:
        log.warning("simulated frame rejected", extra={"path": frame.name, "error": reason})


def make_source(config: SourceConfig) -> FrameSource:
    """The frame source the config asks for."""
    if config.kind == "simulated":
        return SimulatedCameraSource(seed=config.seed, interval_s=config.interval_s)
    if config.kind == "camera":
        from edge_agent.camera import CameraSource  # OpenCV only where a camera is used

        assert config.url is not None  # guaranteed by SourceConfig
        return CameraSource(config.url.get_secret_value(), max_fps=config.max_fps)
    assert config.path is not None  # guaranteed by SourceConfig
    return FolderSource(
        config.path,
        policy=config.processed,
        processed_dir=config.processed_dir,
        rejected_dir=config.rejected_dir,
        poll_interval_s=config.poll_interval_s,
        max_file_bytes=config.max_file_bytes,
        empty_settle_s=config.empty_settle_s,
    )

"""Retention of the files the agent sets aside, so a box runs for months unattended.

The hot folder's ``processed/`` (with ``processed = "move"``) and ``rejected/``,
and the spool's ``bad/``, are pruned by one background thread, at start and every
``retention.interval_s``: files older than ``max_age_s`` are deleted, then the
oldest until the folder holds at most ``max_bytes``. One directory listing per
folder and check: cheap, since the bytes limit keeps the folders small.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from edge_agent.config import RetentionConfig
from edge_agent.sources import FolderSource, FrameSource

log = logging.getLogger(__name__)


def set_aside_folders(source: FrameSource, spool_bad: Path) -> list[Path]:
    """The folders retention keeps bounded: the spool's ``bad/`` and the hot folder's."""
    folders = [spool_bad]
    if isinstance(source, FolderSource):
        assert source.processed_dir is not None and source.rejected_dir is not None
        folders += [source.processed_dir, source.rejected_dir]
    return folders


def prune_folder(folder: Path, max_age_s: float, max_bytes: int, now: float) -> tuple[int, int]:
    """Delete the files of ``folder`` older than ``max_age_s``, then the oldest beyond
    ``max_bytes``; (files, bytes) deleted. Sub-folders and links are left alone."""
    try:
        with os.scandir(folder) as listing:
            files = [
                (entry.stat(follow_symlinks=False), Path(entry.path))
                for entry in listing
                if entry.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return 0, 0
    files.sort(key=lambda f: f[0].st_mtime)  # oldest first
    total = sum(stat.st_size for stat, _ in files)
    deleted = freed = 0
    for stat, path in files:
        if stat.st_mtime >= now - max_age_s and total <= max_bytes:
            break  # every file after this one is younger
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete an old file", extra={"path": str(path), "error": str(exc)})
            continue
        total -= stat.st_size
        deleted, freed = deleted + 1, freed + stat.st_size
    return deleted, freed


class Retention:
    """Prunes ``folders`` at start and every ``config.interval_s`` on its own thread."""

    def __init__(self, folders: Sequence[Path], config: RetentionConfig) -> None:
        self.folders = list(folders)
        self.config = config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qcloop-retention", daemon=True)

    def __repr__(self) -> str:
        return f"Retention({[str(f) for f in self.folders]!r})"

    def start(self) -> None:
        """Prune now, then periodically until ``close``."""
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (a prune under way finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def prune(self) -> int:
        """One pass over every folder; the number of files deleted."""
        now, total = time.time(), 0
        for folder in self.folders:
            deleted, freed = prune_folder(folder, self.config.max_age_s, self.config.max_bytes, now)
            if deleted:
                log.info(
                    "old set-aside files deleted",
                    extra={"folder": str(folder), "files": deleted, "bytes": freed},
                )
            total += deleted
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.prune()
            except Exception:  # a bug here must not end retention for the agent's lifetime
                log.exception("retention pass failed")
            self._stop.wait(self.config.interval_s)

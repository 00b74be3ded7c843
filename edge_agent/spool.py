"""The on-disk store-and-forward spool of feedback images (survives crashes and restarts).

One entry = one file ``entries/p<priority>-<seq>-<sha256>.entry`` holding a magic
line, the sidecar JSON on one line, then the image bytes - written to ``tmp/``,
fsynced and renamed, so an entry is either whole or absent, even after kill -9.
The name carries the priority and the order, so a restart rebuilds the index
from a directory listing. The spool is bounded in bytes (``max_bytes``, and never
more than the disk's free space minus ``reserve_bytes``): when a new entry does not
fit, the lowest-priority (then oldest) entries are dropped first; a new entry less
important than everything spooled is itself dropped. Entries are keyed by
the image's sha256: the same image twice is spooled once (a higher priority
replaces the entry, so an operator verdict wins over an earlier low-confidence one).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.stats import disk_free
from qcloop.contracts import CaptureReason, RawImageSidecar
from qcloop.errors import IntegrityError
from qcloop.fsutil import atomic_write, fsync_dir
from qcloop.storage import sha256_bytes

log = logging.getLogger(__name__)

MAGIC = b"QCLOOP-SPOOL-1\n"
NAME_RE = re.compile(r"^p(\d)-(\d{20})-([0-9a-f]{64})\.entry$")
PRIORITY: dict[CaptureReason, int] = {
    "operator_verdict": 4,
    "manual": 3,
    "low_confidence": 2,
    "sampling": 1,
}


def priority_of(sidecar: RawImageSidecar) -> int:
    """Upload priority of a feedback image (higher goes first and is dropped last)."""
    return PRIORITY.get(sidecar.reason, 0)


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled image: where its file is and how it ranks."""

    priority: int
    seq: int
    sha256: str
    size: int
    path: Path


def encode(data: bytes, sidecar: RawImageSidecar) -> bytes:
    """The bytes of one entry file."""
    return MAGIC + sidecar.to_json().encode() + b"\n" + data


def decode(blob: bytes, name: str) -> tuple[bytes, RawImageSidecar]:
    """Image bytes and sidecar of an entry; ``IntegrityError``/``ContractError`` if broken."""
    if not blob.startswith(MAGIC) or b"\n" not in blob[len(MAGIC) :]:
        raise IntegrityError(f"spool entry {name}: not a spool entry")
    header, data = blob[len(MAGIC) :].split(b"\n", 1)
    sidecar = RawImageSidecar.from_json(header, source=f"spool entry {name}")
    if sha256_bytes(data) != sidecar.sha256:
        raise IntegrityError(f"spool entry {name}: image bytes do not match the sidecar sha256")
    return data, sidecar


class Spool:
    """A bounded, crash-safe folder of feedback entries (thread-safe)."""

    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        reserve_bytes: int = 0,
        free_bytes: Callable[[Path], int | None] = disk_free,
    ) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self._free_bytes = free_bytes  # a parameter so tests can fill a disk
        self._entries_dir = self.folder / "entries"
        self._tmp_dir = self.folder / "tmp"
        self.bad_dir = self.folder / "bad"
        self._lock = threading.Lock()
        self._index: dict[str, SpoolEntry] = {}
        self._seq = 0
        self._recover()

    def __repr__(self) -> str:
        return f"Spool({str(self.folder)!r}, entries={self.depth()}, bytes={self.size()})"

    def _recover(self) -> None:
        """Forget half-written temp files; index what a previous run left."""
        for folder in (self._entries_dir, self._tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        for path in self._entries_dir.iterdir():
            match = NAME_RE.match(path.name)
            if match is None:
                self._set_aside(path, "unknown file in the spool")
                continue
            priority, seq, sha = int(match[1]), int(match[2]), match[3]
            entry = SpoolEntry(priority, seq, sha, path.stat().st_size, path)
            self._index[sha] = entry
            self._seq = max(self._seq, seq)
        if self._index:
            log.info("spool resumed", extra={"entries": len(self._index), "bytes": self.size()})

    def depth(self) -> int:
        """Entries waiting."""
        with self._lock:
            return len(self._index)

    def size(self) -> int:
        """Bytes waiting."""
        with self._lock:
            return sum(e.size for e in self._index.values())

    def put(self, data: bytes, sidecar: RawImageSidecar, priority: int) -> list[SpoolEntry]:
        """Spool an image; returns what was dropped to make room (the new entry itself too)."""
        blob = encode(data, sidecar)
        with self._lock:
            existing = self._index.get(sidecar.sha256)
            if existing is not None and existing.priority >= priority:
                return []
            if existing is not None:  # e.g. an operator verdict on a spooled low-confidence frame
                del self._index[existing.sha256]
                existing.path.unlink(missing_ok=True)
            self._seq += 1
            name = f"p{priority}-{self._seq:020d}-{sidecar.sha256}.entry"
            entry = SpoolEntry(
                priority, self._seq, sidecar.sha256, len(blob), self._entries_dir / name
            )
            dropped = self._make_room(entry)
            if entry in dropped:
                return dropped
            atomic_write(entry.path, blob, tmp_dir=self._tmp_dir)
            self._index[entry.sha256] = entry
            return dropped

    def _make_room(self, new: SpoolEntry) -> list[SpoolEntry]:
        """Drop lowest-priority, oldest entries until ``new`` fits (lock held)."""
        total = sum(e.size for e in self._index.values())
        limit = self._limit(total)
        if new.size > limit:
            return [new]
        dropped: list[SpoolEntry] = []
        while total + new.size > limit:
            victim = min(self._index.values(), key=lambda e: (e.priority, e.seq))
            if victim.priority > new.priority:
                return [*dropped, new]  # everything left matters more than the newcomer
            del self._index[victim.sha256]
            victim.path.unlink(missing_ok=True)
            total -= victim.size
            dropped.append(victim)
        return dropped

    def _limit(self, total: int) -> int:
        """The most bytes the spool may hold now: ``max_bytes``, less if the disk is fuller."""
        free = self._free_bytes(self.folder)
        if free is None:
            return self.max_bytes
        return min(self.max_bytes, total + free - self.reserve_bytes)

    def next(self) -> SpoolEntry | None:
        """The entry to upload next: highest priority, then oldest."""
        with self._lock:
            if not self._index:
                return None
            return min(self._index.values(), key=lambda e: (-e.priority, e.seq))

    def read(self, entry: SpoolEntry) -> tuple[bytes, RawImageSidecar]:
        """Image and sidecar of ``entry`` (``QcloopError``/``OSError`` if broken)."""
        return decode(entry.path.read_bytes(), entry.path.name)

    def remove(self, entry: SpoolEntry) -> None:
        """The entry is uploaded (or given up): delete it."""
        with self._lock:
            self._index.pop(entry.sha256, None)
        entry.path.unlink(missing_ok=True)
        fsync_dir(self._entries_dir)

    def quarantine(self, entry: SpoolEntry, reason: str) -> None:
        """A broken entry: keep it aside in ``bad/`` for a human, out of the queue."""
        with self._lock:
            self._index.pop(entry.sha256, None)
        self._set_aside(entry.path, reason)

    def _set_aside(self, path: Path, reason: str) -> None:
        log.error("spool entry set aside", extra={"path": str(path), "error": reason})
        self.bad_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, self.bad_dir / path.name)
        except OSError:
            path.unlink(missing_ok=True)

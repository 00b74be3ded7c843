"""Models rejected on this device, on disk: a release of one of them is refused by its sha256.

A model is rejected when it keeps failing on real frames (``release.max_model_failures``
in a row) or when the agent died while it was on trial (``edge_agent.trial``). The list
lives in ``<state_dir>/rejected-models.json`` (written atomically), newest last, the last
``MAX_REJECTED`` kept, so a restart never loads a rejected model again. To give a model
another chance, remove its entry (or the file) while the agent is stopped.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcloop.contracts import SHA256_RE, ModelRef, utcnow
from qcloop.fsutil import atomic_write

log = logging.getLogger(__name__)

REJECTED_FILE = "rejected-models.json"
MAX_REJECTED = 100  # entries kept, the newest

__all__ = ["MAX_REJECTED", "REJECTED_FILE", "RejectedModel", "RejectedModels"]


class RejectedModel(BaseModel):
    """One model this device will not load again, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=SHA256_RE)
    name: str
    version: str
    reason: str
    at: datetime = Field(default_factory=utcnow)

    def describe(self) -> str:
        """``version (sha12) at <when>: reason``, for logs and the heartbeat."""
        when = self.at.isoformat(timespec="seconds")
        return f"{self.name} {self.version} ({self.sha256[:12]}) at {when}: {self.reason}"


class RejectedList(BaseModel):
    """Content of ``rejected-models.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[RejectedModel] = []


class RejectedModels:
    """The rejected models of one device (read by the loader, added to by the loop)."""

    def __init__(self, state_dir: Path, limit: int = MAX_REJECTED) -> None:
        self.path = Path(state_dir) / REJECTED_FILE
        self.limit = limit
        self._lock = threading.Lock()
        self._models = _read(self.path)

    def __repr__(self) -> str:
        return f"RejectedModels({str(self.path)!r}, {len(self._models)} models)"

    def get(self, sha256: str) -> RejectedModel | None:
        """The entry of the model with this sha256, if it was rejected."""
        with self._lock:
            return next((m for m in self._models if m.sha256 == sha256), None)

    def last(self) -> RejectedModel | None:
        """The model rejected last, if any."""
        with self._lock:
            return self._models[-1] if self._models else None

    def add(self, sha256: str, ref: ModelRef, reason: str) -> RejectedModel:
        """Reject a model, in memory at once, then on disk (``OSError`` if it cannot be)."""
        entry = RejectedModel(sha256=sha256, name=ref.name, version=ref.version, reason=reason)
        with self._lock:
            others = [m for m in self._models if m.sha256 != sha256]
            self._models = [*others, entry][-self.limit :]
            text = RejectedList(models=self._models).model_dump_json(indent=2) + "\n"
            atomic_write(self.path, text.encode())
        return entry


def _read(path: Path) -> list[RejectedModel]:
    try:
        return list(RejectedList.model_validate_json(path.read_bytes()).models)
    except FileNotFoundError:
        return []
    except (OSError, ValidationError) as exc:
        log.error(
            "rejected-models record unreadable, starting from none",
            extra={"path": str(path), "error": str(exc)},
        )
        return []

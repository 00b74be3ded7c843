"""The last good models, newest first, in ``<model_dir>/last-good.json`` (written atomically).

A model becomes *good* once it passed verification and the smoke test, was
swapped in and served its trial (``edge_agent.trial``). Each entry keeps the
signed envelope its release came in, so at start the agent serves the newest good
model whose release still verifies with the keys trusted then (after a key
rotation too) and whose file still matches: a box that boots without the broker
inspects at once. Only the last ``release.keep_models`` good models stay on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from qcloop.contracts import ReleaseEnvelope, ReleaseMessage
from qcloop.fsutil import atomic_write
from qcloop.signing import unverified

log = logging.getLogger(__name__)

HISTORY_FILE = "last-good.json"


class GoodModel(BaseModel):
    """A model that served: its file in ``model_dir`` and the signed release it came in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    envelope: ReleaseEnvelope

    @property
    def release(self) -> ReleaseMessage:
        """The release, NOT verified (to show it; ``ReleaseGate.verify_stored`` to use it)."""
        return unverified(self.envelope).message


class History(BaseModel):
    """Content of ``last-good.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[GoodModel] = []


def read_history(model_dir: Path) -> list[GoodModel]:
    """Good models, newest first; a missing or broken file reads as none (logged)."""
    path = Path(model_dir) / HISTORY_FILE
    try:
        return list(History.model_validate_json(path.read_bytes()).models)
    except FileNotFoundError:
        return []
    except (OSError, ValidationError) as exc:
        log.error(
            "last-good record unreadable, ignored", extra={"path": str(path), "error": str(exc)}
        )
        return []


def write_history(model_dir: Path, models: list[GoodModel]) -> None:
    """Replace ``last-good.json`` atomically."""
    text = History(models=models).model_dump_json(indent=2) + "\n"
    atomic_write(Path(model_dir) / HISTORY_FILE, text.encode())


def record_good(
    model_dir: Path, envelope: ReleaseEnvelope, path: Path, keep: int
) -> list[GoodModel]:
    """Put ``path`` first, keep ``keep`` entries, delete the files of those that fell off.

    Only those: a model the loader is verifying at this moment is not touched.
    """
    before = read_history(model_dir)
    others = [m for m in before if m.file != path.name]
    entries = [GoodModel(file=path.name, envelope=envelope), *others][:keep]
    write_history(model_dir, entries)
    kept = {m.file for m in entries}
    for old in before:
        if old.file not in kept:
            (Path(model_dir) / old.file).unlink(missing_ok=True)
    return entries


def forget(model_dir: Path, path: Path) -> None:
    """Drop ``path`` from the good models and from disk (it failed while serving)."""
    entries = read_history(model_dir)
    kept = [m for m in entries if m.file != path.name]
    if kept != entries:
        write_history(model_dir, kept)
    (Path(model_dir) / path.name).unlink(missing_ok=True)

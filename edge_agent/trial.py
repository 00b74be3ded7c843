"""Commit after proof: a released model is on trial until it served, and a model the agent
died with is never loaded again.

    release verified, downloaded, smoke-tested
      --> trial record written (<state_dir>/trial.json) --> swapped in: ON TRIAL
      --> release.trial_frames frames in a row without an inference failure, and
          release.trial_s seconds since the swap --> GOOD: first in last-good.json,
          the trial record removed
      --> release.max_model_failures failures in a row --> REJECTED, rolled back
      --> the agent dies (crash, out-of-memory kill, watchdog): the record is still
          there at the next start --> REJECTED, the last good model served

Rejected models go to ``<state_dir>/rejected-models.json`` (``edge_agent.rejected``),
and a release of one is refused by its sha256. A model already in last-good.json has
served before and is not on trial again; a ``--model`` file is never on trial. A clean
stop ends a trial without a verdict: the record is removed, and the model, not yet
good, is on trial again when its (retained) release is taken at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import EdgeConfig
from edge_agent.history import forget, read_history, record_good
from edge_agent.rejected import RejectedModel, RejectedModels
from edge_agent.release import ServingModel
from edge_agent.stats import Counters
from qcloop.contracts import SHA256_RE, ModelRef, utcnow
from qcloop.fsutil import atomic_write, fsync_dir

log = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"
CRASHED = "the agent stopped while this model was on trial (crash, out of memory or watchdog?)"
FAILING = "inference failed on {failures} frames in a row"

__all__ = ["CRASHED", "TRIAL_FILE", "Trial", "TrialRecord"]


class TrialRecord(BaseModel):
    """The model on trial, written before it is swapped in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=SHA256_RE)
    file: str = Field(description="its file in model_dir")
    name: str
    version: str
    sequence: int = Field(ge=0, description="of the release it came in")
    started: datetime = Field(default_factory=utcnow)


class Trial:
    """The serving model's trial (the inspection loop's thread only)."""

    def __init__(
        self,
        config: EdgeConfig,
        counters: Counters,
        rejected: RejectedModels | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._counters = counters
        self.rejected = rejected if rejected is not None else RejectedModels(config.state_dir)
        self._clock = clock
        self.path = Path(config.state_dir) / TRIAL_FILE
        self.record: TrialRecord | None = None  # the serving model's trial, if on trial
        self._frames = 0  # frames in a row without a failure since the swap
        self._since = 0.0  # clock() at the swap

    def __repr__(self) -> str:
        on = f"{self.record.name} {self.record.version}" if self.record else None
        return f"Trial(on_trial={on!r}, frames={self._frames})"

    @property
    def since(self) -> datetime | None:
        """When the serving model's trial began (None: it is not on trial)."""
        return self.record.started if self.record else None

    def recover(self) -> RejectedModel | None:
        """At start: a model still on trial took the agent down; reject it (its entry)."""
        record = _read(self.path)
        if record is None:
            return None
        model_dir = self._config.model_dir
        if any(m.release.sha256 == record.sha256 for m in read_history(model_dir)):
            self._clear()  # promoted, the agent stopped before the record was removed
            return None
        ref = ModelRef(name=record.name, version=record.version)
        entry = self._reject(record.sha256, ref, CRASHED)
        self._counters.add("errors")
        self._forget(model_dir / Path(record.file).name)
        log.error(
            "model on trial when the agent stopped: rejected, the last good model serves",
            extra={"model": record.name, "version": record.version, "sha256": record.sha256},
        )
        self._clear()
        return entry

    def begin(self, model: ServingModel) -> bool:
        """Before ``model`` is swapped in: its trial is on disk (False: it cannot be, so the
        model must not be swapped in). A model that served before is good at once."""
        if model.envelope is None or model.release is None:  # a --model file
            self._restart(None)
            return True
        model_dir = self._config.model_dir
        if any(m.release.sha256 == model.sha256 for m in read_history(model_dir)):
            self._restart(None)
            self._promote(model, "model served before, good")
            return True
        record = TrialRecord(
            sha256=model.sha256,
            file=model.path.name,
            name=model.ref.name,
            version=model.ref.version,
            sequence=model.release.sequence,
        )
        try:
            atomic_write(self.path, (record.model_dump_json(indent=2) + "\n").encode())
        except OSError as exc:
            log.error(
                "cannot record the trial of a new model, keeping the current one",
                extra={"version": model.ref.version, "error": str(exc)},
            )
            self._counters.add("errors")
            return False
        self._restart(record)
        log.info(
            "model on trial",
            extra={
                "version": model.ref.version,
                "trial_frames": self._config.release.trial_frames,
                "trial_s": self._config.release.trial_s,
            },
        )
        return True

    def frame(self, ok: bool) -> None:
        """One frame of the serving model: served, or failed (the count starts again)."""
        self._frames = self._frames + 1 if ok else 0

    def check(self, serving: ServingModel | None) -> None:
        """Promote the serving model if its trial is over: enough frames, enough time."""
        record, release = self.record, self._config.release
        if record is None or serving is None or serving.sha256 != record.sha256:
            return
        elapsed = self._clock() - self._since
        if self._frames >= release.trial_frames and elapsed >= release.trial_s:
            self._promote(serving, "model promoted after its trial, good", elapsed)
            self._end_record()

    def reject(self, model: ServingModel, failures: int) -> None:
        """``model`` kept failing while serving: never load it again, nor keep it as good."""
        self._reject(model.sha256, model.ref, FAILING.format(failures=failures))
        if model.release is not None:
            self._forget(model.path)
        if self.record is not None and self.record.sha256 == model.sha256:
            self._end_record()

    def end(self) -> None:
        """A clean stop: the trial ends without a verdict (the model is not good yet)."""
        if self.record is not None:
            log.info("stopped during a trial: the model is not good yet")
        self._end_record()

    def _promote(self, model: ServingModel, message: str, elapsed: float = 0.0) -> None:
        assert model.envelope is not None
        keep = self._config.release.keep_models
        try:
            record_good(self._config.model_dir, model.envelope, model.path, keep)
        except OSError as exc:
            log.error("cannot record the last good model", extra={"error": str(exc)})
            self._counters.add("errors")
            return
        extra = {"version": model.ref.version, "frames": self._frames, "seconds": round(elapsed)}
        log.info(message, extra=extra)

    def _forget(self, path: Path) -> None:
        """Drop a rejected model from the good ones and delete its file."""
        try:
            forget(self._config.model_dir, path)
        except OSError as exc:  # it is rejected all the same: never loaded again
            log.error("cannot delete the rejected model", extra={"error": str(exc)})
            self._counters.add("errors")

    def _reject(self, sha256: str, ref: ModelRef, reason: str) -> RejectedModel:
        self._counters.add("models_rejected")
        try:
            return self.rejected.add(sha256, ref, reason)
        except OSError as exc:  # rejected for this run all the same
            log.error("cannot record the rejected model", extra={"error": str(exc)})
            return self.rejected.get(sha256) or RejectedModel(
                sha256=sha256, name=ref.name, version=ref.version, reason=reason
            )

    def _restart(self, record: TrialRecord | None) -> None:
        """A model swaps in: on trial (``record``, on disk already) or not (``None``)."""
        self._frames, self._since = 0, self._clock()
        if record is None:
            self._end_record()
        self.record = record

    def _end_record(self) -> None:
        self.record = None
        self._clear()

    def _clear(self) -> None:
        try:
            if self.path.exists():
                self.path.unlink()
                fsync_dir(self.path.parent)
        except OSError as exc:
            log.error("cannot remove the trial record", extra={"error": str(exc)})
            self._counters.add("errors")


def _read(path: Path) -> TrialRecord | None:
    try:
        return TrialRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:  # a record half there: died writing it
        log.error("trial record unreadable, ignored", extra={"path": str(path), "error": str(exc)})
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None

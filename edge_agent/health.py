"""The heartbeat's content: each kind of trouble counted apart, so an operator tells
"store down, nothing lost" (upload failures, spool depth) from "model refused"
(refused releases and the last reason), "model rejected" (the last one, when and why;
the serving model's trial) or "bad frames" (frames rejected).

The release loader counts refusals; their reason is the error it logs, which
``ReleaseErrors`` keeps (the last one) from the loader's logger.
"""

from __future__ import annotations

import logging
from datetime import datetime

from edge_agent.config import EdgeConfig
from edge_agent.policies import FeedbackPolicies
from edge_agent.spool import Spool
from edge_agent.stats import Counters, Throughput, disk_free
from edge_agent.trial import Trial
from qcloop.contracts import ModelRef
from qcloop.devices import DeviceState, Status

RELEASE_LOGGER = "edge_agent.release"
MAX_REASON = 300  # characters of the last release error in the heartbeat


class ReleaseErrors(logging.Handler):
    """The last error the release loader logged: message and error, shortened."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Remember ``record`` as the last release error."""
        error = getattr(record, "error", None)
        text = f"{record.getMessage()}: {error}" if error else record.getMessage()
        self.last = text[:MAX_REASON]


class Health:
    """Builds the retained ``DeviceState`` from the agent's counters, throughput and spool."""

    def __init__(self, config: EdgeConfig, counters: Counters, policies: FeedbackPolicies) -> None:
        self._config = config
        self._counters = counters
        self._policies = policies
        self.throughput = Throughput()
        self.spool: Spool | None = None
        self.trial: Trial | None = None
        self._release_errors = ReleaseErrors()

    def __repr__(self) -> str:
        return f"Health(device_id={self._config.device_id!r})"

    def watch(self) -> None:
        """Start keeping the release loader's last error (until ``close``)."""
        logging.getLogger(RELEASE_LOGGER).addHandler(self._release_errors)

    def close(self) -> None:
        """Stop listening to the release loader's log."""
        logging.getLogger(RELEASE_LOGGER).removeHandler(self._release_errors)

    def state(self, status: Status, since: datetime, model: ModelRef | None) -> DeviceState:
        """The heartbeat now (reads and resets the fps window)."""
        fps, p50, p95 = self.throughput.read()
        spool, trial, count = self.spool, self.trial, self._counters.get
        rejected = trial.rejected.last() if trial else None
        return DeviceState(
            status=status,
            device_id=self._config.device_id,
            fleet=self._config.fleet,
            model=model,
            model_on_trial_since=trial.since if trial and model else None,
            since=since,
            frames=count("frames_inferred"),
            fps=fps,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            spool_depth=spool.depth() if spool else 0,
            spool_bytes=spool.size() if spool else 0,
            disk_free_bytes=disk_free(self._config.state_dir),
            releases_refused=count("releases_refused"),
            release_last_error=self._release_errors.last,
            models_rejected=count("models_rejected"),
            model_last_rejected=rejected.describe()[:MAX_REASON] if rejected else None,
            upload_failures=count("upload_failures"),
            frames_rejected=count("frames_rejected"),
            mqtt_dropped=count("mqtt_dropped"),
            errors=count("errors"),
            feedback_policies=self._policies.counts(),
        )

"""The heartbeat's content: each kind of trouble counted apart, so an operator tells
"store down, nothing lost" (upload failures, spool depth) from "model refused"
(refused releases and the last reason), "model rejected" (the last one, when and why;
the serving model's trial) or "bad frames" (frames rejected).

The release loader counts refusals and keeps the reason of the last one
(``ModelLoader.last_error``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from edge_agent.config import EdgeConfig
from edge_agent.policies import FeedbackPolicies
from edge_agent.spool import Spool
from edge_agent.stats import Counters, Throughput, disk_free
from edge_agent.trial import Trial
from qcloop.contracts import ModelRef
from qcloop.devices import DeviceState, Status

if TYPE_CHECKING:
    from edge_agent.release import ModelLoader

MAX_REASON = 300  # characters of the last release error in the heartbeat


class Health:
    """Builds the retained ``DeviceState`` from the agent's counters, throughput and spool."""

    def __init__(self, config: EdgeConfig, counters: Counters, policies: FeedbackPolicies) -> None:
        self._config = config
        self._counters = counters
        self._policies = policies
        self.throughput = Throughput()
        self.spool: Spool | None = None
        self.trial: Trial | None = None
        self.loader: ModelLoader | None = None

    def __repr__(self) -> str:
        return f"Health(device_id={self._config.device_id!r})"

    @property
    def config(self) -> EdgeConfig:
        """The agent's settings."""
        return self._config

    @property
    def counters(self) -> Counters:
        """The agent's counters (read by the metrics exporter)."""
        return self._counters

    @property
    def policies(self) -> FeedbackPolicies:
        """The feedback policies and their per-policy counts."""
        return self._policies

    def state(self, status: Status, since: datetime, model: ModelRef | None) -> DeviceState:
        """The heartbeat now (reads and resets the fps window)."""
        fps, p50, p95 = self.throughput.read()
        spool, trial, count = self.spool, self.trial, self._counters.get
        rejected = trial.rejected.last() if trial else None
        release_error = self.loader.last_error if self.loader else None
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
            release_last_error=release_error[:MAX_REASON] if release_error else None,
            models_rejected=count("models_rejected"),
            model_last_rejected=rejected.describe()[:MAX_REASON] if rejected else None,
            upload_failures=count("upload_failures"),
            frames_rejected=count("frames_rejected"),
            mqtt_dropped=count("mqtt_dropped"),
            errors=count("errors"),
            feedback_policies=self._policies.counts(),
        )

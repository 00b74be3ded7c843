"""What the agent reports: run statistics (``AgentStats``) and its retained state (heartbeat)."""

from __future__ import annotations

import shutil
import threading
import time
from bisect import bisect_left
from collections import deque
from itertools import accumulate
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qcloop.contracts import ModelRef
from qcloop.stats import percentile

COUNTERS = (
    "frames_inferred",
    "feedback_images",
    "feedback_spooled",
    "feedback_dropped",
    "swaps",
    "rollbacks",
    "models_rejected",
    "releases_refused",
    "upload_failures",
    "frames_rejected",
    "mqtt_dropped",
    "errors",
    "verdicts_sent",
    "verdicts_unknown_frame",
    "verdicts_ignored",
)
# troubles counted apart that also count in ``errors``, the total of every failure
ALSO_ERRORS = frozenset({"upload_failures", "frames_rejected"})
# upper bounds (seconds) of the inference latency histogram: ~5 ms (a GPU) to seconds
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class AgentStats(BaseModel):
    """Totals of one ``Agent.run``; printed as JSON by ``qcloop-edge run``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_inferred: int = 0
    feedback_images: int = Field(default=0, description="images uploaded to the raw store")
    feedback_spooled: int = Field(default=0, description="images written to the spool")
    feedback_dropped: int = Field(default=0, description="spool full: lowest priority dropped")
    serving_model: ModelRef | None = None
    swaps: int = Field(default=0, description="models switched to (the first release counts)")
    rollbacks: int = Field(default=0, description="back to the previous model after failures")
    models_rejected: int = Field(
        default=0, description="models never to be loaded again: failing, or died with on trial"
    )
    releases_refused: int = Field(default=0, description="invalid, untrusted or broken releases")
    upload_failures: int = Field(default=0, description="failed uploads to the store (retried)")
    frames_rejected: int = Field(
        default=0, description="frames set aside: not an image, too large, empty, crashed on"
    )
    mqtt_dropped: int = Field(default=0, description="MQTT messages dropped: queue full")
    errors: int = Field(default=0, description="every failure, all kinds together")
    verdicts_sent: int = Field(default=0, description="frames spooled for an operator verdict")
    verdicts_unknown_frame: int = Field(default=0, description="verdicts on a frame not kept")
    verdicts_ignored: int = Field(default=0, description="malformed or oversized verdicts")
    feedback_policies: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per policy: sent, limited, deduplicated"
    )


class Counters:
    """Thread-safe counters shared by the loop, the model loader and the uploader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        self._reasons: dict[str, int] = {}  # policy frames spooled, by sidecar reason

    def add(self, name: str, amount: int = 1) -> None:
        """Increase one counter (those in ``ALSO_ERRORS`` increase ``errors`` too)."""
        with self._lock:
            self._values[name] += amount
            if name in ALSO_ERRORS:
                self._values["errors"] += amount

    def get(self, name: str) -> int:
        """Current value of one counter."""
        with self._lock:
            return self._values[name]

    def values(self) -> dict[str, int]:
        """Every counter now (a copy)."""
        with self._lock:
            return dict(self._values)

    def add_reason(self, reason: str) -> None:
        """A frame a feedback policy sent went to the spool with sidecar ``reason``."""
        with self._lock:
            self._reasons[reason] = self._reasons.get(reason, 0) + 1

    def reasons(self) -> dict[str, int]:
        """Frames the feedback policies spooled, by sidecar reason (operator verdicts are
        ``verdicts_sent``)."""
        with self._lock:
            return dict(self._reasons)

    def snapshot(
        self,
        serving_model: ModelRef | None,
        feedback_policies: dict[str, dict[str, int]] | None = None,
    ) -> AgentStats:
        """Frozen totals."""
        with self._lock:
            return AgentStats(
                serving_model=serving_model,
                feedback_policies=feedback_policies or {},
                **self._values,
            )


class LatencyHistogram:
    """Every frame's latency counted in buckets since the start (a Prometheus histogram)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self._lock = threading.Lock()  # written by the loop, read by a metrics scrape
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self._sum = 0.0

    def add(self, seconds: float) -> None:
        """One frame (a bucket's bound is inclusive, as Prometheus' ``le``)."""
        index = bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def read(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, and the sum of the latencies."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        les = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        return list(zip(les, accumulate(counts), strict=True)), total


class Throughput:
    """Latencies of the last ``size`` frames and frames per second between two reads;
    every latency in ``histogram`` too."""

    def __init__(self, size: int = 500) -> None:
        self._latencies: deque[float] = deque(maxlen=size)
        self._frames = 0
        self._since = time.monotonic()
        self.histogram = LatencyHistogram()

    def add(self, latency_ms: float) -> None:
        """One inferred frame (loop thread only)."""
        self._latencies.append(latency_ms)
        self._frames += 1
        self.histogram.add(latency_ms / 1000)

    def read(self) -> tuple[float, float | None, float | None]:
        """(fps since the previous read, p50, p95 in ms); resets the fps window."""
        now = time.monotonic()
        fps = self._frames / max(now - self._since, 1e-9)
        self._frames, self._since = 0, now
        values = list(self._latencies)
        if not values:
            return round(fps, 3), None, None
        return round(fps, 3), round(percentile(values, 50), 3), round(percentile(values, 95), 3)


def disk_free(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (None if it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None

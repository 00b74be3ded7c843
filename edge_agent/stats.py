"""What the agent reports: run statistics (``AgentStats``) and its retained state."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qcloop.contracts import ModelRef, utcnow

Status = Literal["starting", "waiting_for_model", "serving", "offline"]


class AgentStats(BaseModel):
    """Totals of one ``Agent.run``; printed as JSON by ``qcloop-edge run``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_inferred: int = 0
    feedback_images: int = Field(default=0, description="images uploaded to the raw store")
    serving_model: ModelRef | None = None
    swaps: int = Field(default=0, description="models switched to (the first release counts)")
    errors: int = Field(default=0, description="refused releases, bad files, failed uploads")


class DeviceState(BaseModel):
    """Retained on ``qcloop/devices/<id>/state``; ``offline`` also comes as the last will."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Status
    device_id: str
    fleet: str
    model: ModelRef | None = None
    since: datetime = Field(default_factory=utcnow, description="when this status began")
    frames: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


class Counters:
    """Thread-safe counters shared by the loop, the model loader and the uploader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {"frames_inferred": 0, "feedback_images": 0, "swaps": 0, "errors": 0}

    def add(self, name: str, amount: int = 1) -> None:
        """Increase one counter."""
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        """Current value of one counter."""
        with self._lock:
            return self._values[name]

    def snapshot(self, serving_model: ModelRef | None) -> AgentStats:
        """Frozen totals."""
        with self._lock:
            return AgentStats(serving_model=serving_model, **self._values)

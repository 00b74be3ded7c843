"""Operator verdicts: "this frame was a missed defect / a false alarm" - send it back.

    qcloop/devices/<id>/verdict  {"frame": <name or sha256>, "verdict": ..., "by": ..., "note": ...}
        --MQTT thread: parse_verdict--> queue --loop: RecentFrames.find--> spool (operator_verdict)

``RecentFrames`` keeps the last inspected frames (count- and bytes-bounded) so that a
verdict given a few seconds later still finds the bytes. The verdict is recorded in
the sidecar's ``source`` as ``operator:<by>:<verdict>`` (the contract has no
verdict field).
"""

from __future__ import annotations

import io
import logging
import queue
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import VerdictConfig
from edge_agent.feedback import FeedbackUploader, build_sidecar
from edge_agent.stats import Counters
from qcloop.contracts import Detection, ModelRef
from qcloop.storage import sha256_bytes

log = logging.getLogger(__name__)

VerdictKind = Literal["missed_defect", "false_alarm"]


class Verdict(BaseModel):
    """One operator verdict on a recent frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frame: str = Field(min_length=1, max_length=255, description="image name or sha256")
    verdict: VerdictKind
    by: str = Field(default="operator", min_length=1, max_length=64, pattern=r"^[^:\s]+$")
    note: str = Field(default="", max_length=1000)

    def source(self) -> str:
        """What goes into the sidecar's ``source``."""
        return f"operator:{self.by}:{self.verdict}"


def parse_verdict(payload: bytes, max_bytes: int) -> Verdict | None:
    """The verdict in ``payload``, or None (logged) if oversized or malformed."""
    if len(payload) > max_bytes:
        log.warning(
            "verdict ignored: payload too large", extra={"bytes": len(payload), "max": max_bytes}
        )
        return None
    try:
        return Verdict.model_validate_json(payload)
    except ValidationError as exc:
        log.warning("verdict ignored: malformed", extra={"error": str(exc).splitlines()[0]})
        return None


@dataclass(frozen=True)
class RecentFrame:
    """What a verdict needs to send a frame back."""

    name: str
    sha256: str
    data: bytes
    detections: list[Detection]
    model: ModelRef | None


class RecentFrames:
    """The last ``max_frames`` frames, at most ``max_bytes`` of image bytes (loop thread only)."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._frames: OrderedDict[str, RecentFrame] = OrderedDict()  # by sha256, oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, frame: RecentFrame) -> None:
        """Remember ``frame``; the oldest go when a bound is passed."""
        if len(frame.data) > self.max_bytes:
            return
        old = self._frames.pop(frame.sha256, None)
        self._bytes -= len(old.data) if old else 0
        self._frames[frame.sha256] = frame
        self._bytes += len(frame.data)
        while len(self._frames) > self.max_frames or self._bytes > self.max_bytes:
            _, dropped = self._frames.popitem(last=False)
            self._bytes -= len(dropped.data)

    def find(self, key: str) -> RecentFrame | None:
        """The newest frame whose sha256 or file name is ``key``."""
        if key in self._frames:
            return self._frames[key]
        for frame in reversed(self._frames.values()):
            if frame.name == key:
                return frame
        return None


class VerdictInbox:
    """Verdicts in from MQTT (any thread), frames sent back from the loop thread."""

    def __init__(self, config: VerdictConfig, counters: Counters, device_id: str) -> None:
        self.config = config
        self.device_id = device_id
        self.recent = RecentFrames(config.buffer_frames, config.buffer_max_bytes)
        self._counters = counters
        self._inbox: queue.SimpleQueue[Verdict] = queue.SimpleQueue()

    def receive(self, payload: bytes) -> None:
        """A verdict message (MQTT thread): validated now, handled by the loop."""
        verdict = parse_verdict(payload, self.config.max_payload_bytes)
        if verdict is None:
            self._counters.add("verdicts_ignored")
            return
        self._inbox.put(verdict)

    def remember(
        self, name: str, data: bytes, detections: list[Detection], model: ModelRef | None
    ) -> None:
        """An inspected frame (loop thread)."""
        sha = sha256_bytes(data)
        self.recent.add(RecentFrame(Path(name).name, sha, data, detections, model))

    def drain(self, feedback: FeedbackUploader) -> None:
        """Send back the frames of the verdicts received so far (loop thread)."""
        while True:
            try:
                verdict = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._apply(verdict, feedback)

    def _apply(self, verdict: Verdict, feedback: FeedbackUploader) -> None:
        frame = self.recent.find(verdict.frame)
        fields = verdict.model_dump()
        if frame is None:
            self._counters.add("verdicts_unknown_frame")
            log.warning(
                f"verdict ignored: frame not in the last {self.config.buffer_frames} frames",
                extra={**fields, "kept": len(self.recent)},
            )
            return
        image = Image.open(io.BytesIO(frame.data))  # lazy: header only, for size and format
        sidecar = build_sidecar(
            frame.data,
            image,
            device_id=self.device_id,
            frame_name=frame.name,
            model=frame.model,
            predictions=frame.detections,
            reason="operator_verdict",
            source=verdict.source(),
        )
        if feedback.submit(frame.data, sidecar):
            self._counters.add("verdicts_sent")
            log.info("verdict: frame sent back", extra={**fields, "key": sidecar.key})

"""A frame handed to the model: which model infers it, and its outcome as a future.

With several inference workers the loop keeps frames in flight and takes their
outcomes in frame order; with one, a frame is inferred inline and its outcome is an
already-finished future, so the loop treats both alike.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass

from edge_agent.prefetch import Prefetched
from edge_agent.release import ServingModel
from qcloop.contracts import Detection

Outcome = tuple[list[Detection], float]  # detections, milliseconds the model's part took


@dataclass
class InFlight:
    """A frame handed to the model: with which model, and its outcome."""

    item: Prefetched
    serving: ServingModel
    outcome: Future[Outcome]


def infer_timed(item: Prefetched, serving: ServingModel) -> Outcome:
    """The model's part of a frame (on an inference worker or inline), timed."""
    started = time.perf_counter()
    detections = serving.detector.infer(item.for_model(serving.detector.plan))
    return detections, (time.perf_counter() - started) * 1000.0


def infer_now(item: Prefetched, serving: ServingModel) -> Future[Outcome]:
    """``infer_timed`` on this thread, as an already-finished future."""
    outcome: Future[Outcome] = Future()
    try:
        outcome.set_result(infer_timed(item, serving))
    except Exception as exc:  # re-raised by ``result()`` as if raised here
        outcome.set_exception(exc)
    return outcome

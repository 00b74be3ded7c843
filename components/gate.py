"""The quality gate: may an evaluated model be registered?"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from qcloop.contracts import EvalMetrics
from qcloop.errors import PipelineError


class GateDecision(BaseModel):
    """Outcome of the gate: ``passed`` and a one-line ``reason`` a human can read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    reason: str


def gate(metrics: EvalMetrics, *, min_map50_95: float) -> GateDecision:
    """Pass if mAP50-95 reaches ``min_map50_95`` on at least one evaluated image."""
    if not 0.0 <= min_map50_95 <= 1.0:
        raise PipelineError(f"gate threshold min_map50_95 = {min_map50_95}: give a value in 0..1")
    if metrics.images == 0:
        return GateDecision(passed=False, reason="no test images were evaluated")
    score = f"mAP50-95 {metrics.map50_95:.4f} on {metrics.images} test images"
    if metrics.map50_95 >= min_map50_95:
        return GateDecision(passed=True, reason=f"{score} >= threshold {min_map50_95:.4f}")
    return GateDecision(passed=False, reason=f"{score} < threshold {min_map50_95:.4f}")

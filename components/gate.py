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


def gate(
    metrics: EvalMetrics,
    *,
    min_map50_95: float,
    champion: EvalMetrics | None = None,
    tolerance: float = 0.0,
) -> GateDecision:
    """Pass if mAP50-95 reaches ``min_map50_95`` on at least one evaluated image and is
    not worse than the ``champion`` (production model, same test split) by more than
    ``tolerance``."""
    for name, value in (("min_map50_95", min_map50_95), ("tolerance", tolerance)):
        if not 0.0 <= value <= 1.0:
            raise PipelineError(f"gate {name} = {value}: give a value in 0..1")
    if metrics.images == 0:
        return GateDecision(passed=False, reason="no test images were evaluated")
    score = f"mAP50-95 {metrics.map50_95:.4f} on {metrics.images} test images"
    if metrics.map50_95 < min_map50_95:
        return GateDecision(passed=False, reason=f"{score} < threshold {min_map50_95:.4f}")
    reason = f"{score} >= threshold {min_map50_95:.4f}"
    if champion is None:
        return GateDecision(passed=True, reason=f"{reason}; no production model to beat")
    floor = champion.map50_95 - tolerance
    versus = f"production {champion.map50_95:.4f} - tolerance {tolerance:.4f} = {floor:.4f}"
    if metrics.map50_95 < floor:
        return GateDecision(passed=False, reason=f"{score} < {versus}")
    return GateDecision(passed=True, reason=f"{reason} and >= {versus}")

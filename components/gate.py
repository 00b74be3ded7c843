"""The quality gate: may an evaluated model be registered?

Against the production model the gate compares like with like: both models on the same
test images. Where the split holds two captures or more, the comparison is paired
(``Paired``: the difference of the two mAP50-95 with a capture-grouped bootstrap
interval), and the challenger replaces production only when it is better beyond that
noise, or, trained on newer data than production, within ``tolerance`` of it. With one
capture there is no interval: the point figures are compared within ``tolerance``.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from qcloop.contracts import EvalMetrics
from qcloop.errors import PipelineError


class GateDecision(BaseModel):
    """Outcome of the gate: ``passed`` and a one-line ``reason`` a human can read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    reason: str


class Paired(BaseModel):
    """The challenger against production on the same images (``components.champion``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    production_version: str
    difference: float = Field(description="mAP50-95 challenger - production, same images")
    low: float | None = Field(default=None, description="95% interval, capture-grouped")
    high: float | None = None
    captures: int = Field(ge=0)
    new_data: bool = Field(description="the challenger's dataset version is not production's")


def gate(
    metrics: EvalMetrics,
    *,
    min_map50_95: float,
    champion: EvalMetrics | None = None,
    tolerance: float = 0.0,
    paired: Paired | None = None,
) -> GateDecision:
    """Pass if mAP50-95 reaches ``min_map50_95`` on at least one evaluated image and, when
    there is a ``champion`` (production model, same test split), compares well with it:
    with a ``paired`` interval, better beyond the noise, or within ``tolerance`` on new
    data; without one, not worse than the champion by more than ``tolerance``."""
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
    if paired is not None and paired.low is not None and paired.high is not None:
        return _paired_decision(reason, paired, tolerance)
    floor = champion.map50_95 - tolerance
    versus = f"production {champion.map50_95:.4f} - tolerance {tolerance:.4f} = {floor:.4f}"
    if paired is not None:  # the same images, too few captures for an interval
        versus += (
            f" (production v{paired.production_version} on the same images; "
            f"{paired.captures} capture(s): no interval)"
        )
    if metrics.map50_95 < floor:
        return GateDecision(passed=False, reason=f"{score} < {versus}")
    return GateDecision(passed=True, reason=f"{reason} and >= {versus}")


def decide(
    metrics_json: str, champion_json: str, *, min_map50_95: float, tolerance: float
) -> GateDecision:
    """``gate`` on the pipeline's JSON: the evaluation's ``EvalMetrics`` and the champion
    step's ``{"metrics": EvalMetrics, "paired": Paired}`` ("" without production)."""
    champion, paired = None, None
    if champion_json:
        found = json.loads(champion_json)
        champion = EvalMetrics.model_validate(found["metrics"])
        paired = Paired.model_validate(found["paired"])
    return gate(
        EvalMetrics.from_json(metrics_json),
        min_map50_95=min_map50_95,
        champion=champion,
        tolerance=tolerance,
        paired=paired,
    )


def _paired_decision(reason: str, paired: Paired, tolerance: float) -> GateDecision:
    """Better than production beyond the noise, or within tolerance on new data."""
    assert paired.low is not None and paired.high is not None  # checked by the caller
    versus = (
        f"against production v{paired.production_version} on the same images: "
        f"{paired.difference:+.4f} (95% interval {paired.low:+.4f}..{paired.high:+.4f} "
        f"over {paired.captures} captures)"
    )
    if paired.low > 0.0:
        return GateDecision(passed=True, reason=f"{reason}; better beyond the noise {versus}")
    if paired.new_data and paired.difference >= -tolerance:
        return GateDecision(
            passed=True,
            reason=f"{reason}; trained on new data, within tolerance {tolerance:.4f} {versus}",
        )
    if paired.new_data:
        why = f"more than tolerance {tolerance:.4f} below production"
    else:
        why = (
            "on production's own data and not better beyond the noise; "
            "label more images, or change the recipe"
        )
    return GateDecision(passed=False, reason=f"{reason}, but {why} {versus}")

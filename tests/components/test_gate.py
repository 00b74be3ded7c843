"""The gate: register only what reaches the threshold."""

from __future__ import annotations

import pytest

from components.gate import GateDecision, gate
from qcloop.contracts import EvalMetrics
from qcloop.errors import PipelineError


def _metrics(map50_95: float, images: int = 20) -> EvalMetrics:
    return EvalMetrics(map50=0.9, map50_95=map50_95, precision=0.8, recall=0.7, images=images)


def test_passes_at_or_above_the_threshold() -> None:
    assert gate(_metrics(0.3), min_map50_95=0.3).passed
    decision = gate(_metrics(0.52), min_map50_95=0.3)
    assert decision == GateDecision(passed=True, reason=decision.reason)
    assert "0.5200" in decision.reason and "0.3000" in decision.reason


def test_fails_below_the_threshold_and_says_why() -> None:
    decision = gate(_metrics(0.29), min_map50_95=0.3)
    assert not decision.passed
    assert decision.reason == "mAP50-95 0.2900 on 20 test images < threshold 0.3000"


def test_no_test_images_never_pass() -> None:
    decision = gate(_metrics(0.0, images=0), min_map50_95=0.0)
    assert not decision.passed and "no test images" in decision.reason


def test_decision_is_frozen() -> None:
    decision = gate(_metrics(0.5), min_map50_95=0.3)
    with pytest.raises(ValueError):
        decision.passed = False  # type: ignore[misc]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    with pytest.raises(PipelineError, match="give a value in 0..1"):
        gate(_metrics(0.5), min_map50_95=threshold)

"""The gate: register only what reaches the threshold."""

from __future__ import annotations

import pytest

from components.gate import GateDecision, Paired, decide, gate
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
    with pytest.raises(ValueError, match="frozen"):
        decision.passed = False  # type: ignore[misc]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    with pytest.raises(PipelineError, match=r"give a value in 0..1"):
        gate(_metrics(0.5), min_map50_95=threshold)


def _m(map50_95: float) -> EvalMetrics:
    return EvalMetrics(map50=0.9, map50_95=map50_95, precision=0.8, recall=0.8, images=10)


@pytest.mark.parametrize(
    ("challenger", "production", "tolerance", "passed", "fragment"),
    [
        (0.50, None, 0.02, True, "no production model to beat"),
        (0.50, 0.51, 0.02, True, "and >= production 0.5100"),
        (0.48, 0.51, 0.02, False, "< production 0.5100 - tolerance 0.0200"),
        (0.20, 0.10, 0.00, False, "< threshold 0.3000"),  # threshold first, champion second
    ],
)
def test_champion_challenger(
    challenger: float, production: float | None, tolerance: float, passed: bool, fragment: str
) -> None:
    champion = _m(production) if production is not None else None
    decision = gate(_m(challenger), min_map50_95=0.3, champion=champion, tolerance=tolerance)
    assert decision.passed is passed
    assert fragment in decision.reason


def test_tolerance_must_be_a_fraction() -> None:
    with pytest.raises(PipelineError, match="tolerance"):
        gate(_m(0.5), min_map50_95=0.3, champion=_m(0.5), tolerance=2)


def _paired(difference: float, low: float | None, high: float | None, *, new_data: bool) -> Paired:
    return Paired(
        production_version="3",
        difference=difference,
        low=low,
        high=high,
        captures=7,
        new_data=new_data,
    )


@pytest.mark.parametrize(
    ("paired", "passed", "fragment"),
    [
        # better beyond the noise: replaces production, on old data or new
        (_paired(0.05, 0.01, 0.09, new_data=False), True, "better beyond the noise"),
        # the same data and inside the noise: a lucky seed is no reason to swap the line's model
        (_paired(0.01, -0.02, 0.04, new_data=False), False, "not better beyond the noise"),
        # more data and within tolerance: the model that learnt more goes on
        (_paired(-0.01, -0.05, 0.03, new_data=True), True, "trained on new data, within"),
        # more data, but worse than tolerance allows
        (_paired(-0.05, -0.09, -0.01, new_data=True), False, "more than tolerance 0.0200 below"),
    ],
)
def test_a_paired_comparison_decides_against_production(
    paired: Paired, passed: bool, fragment: str
) -> None:
    decision = gate(
        _metrics(0.5), min_map50_95=0.3, champion=_metrics(0.5), tolerance=0.02, paired=paired
    )
    assert decision.passed is passed, decision.reason
    assert fragment in decision.reason
    assert "production v3 on the same images" in decision.reason
    assert "over 7 captures" in decision.reason


def test_without_an_interval_the_point_figures_decide() -> None:
    # one capture in the test split: no interval, so the tolerance rule of the point figures
    paired = _paired(0.01, None, None, new_data=False)
    decision = gate(
        _metrics(0.49), min_map50_95=0.3, champion=_metrics(0.5), tolerance=0.02, paired=paired
    )
    assert decision.passed and "and >= production 0.5000 - tolerance 0.0200" in decision.reason
    assert "production v3 on the same images; 7 capture(s): no interval" in decision.reason


def test_decide_reads_the_champion_steps_json() -> None:
    from components.champion import comparison_json

    champion = comparison_json((_metrics(0.5), _paired(0.01, -0.02, 0.04, new_data=False)))
    refused = decide(_metrics(0.51).to_json(), champion, min_map50_95=0.3, tolerance=0.02)
    assert not refused.passed and "not better beyond the noise" in refused.reason
    first = decide(
        _metrics(0.51).to_json(), comparison_json(None), min_map50_95=0.3, tolerance=0.02
    )
    assert first.passed and "no production model to beat" in first.reason

"""The KFP components are thin: the project image, nothing installed at run time, plain logic."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from components import kfp_components as steps
from qcloop.contracts import EvalMetrics

COMPONENTS = [
    steps.load_dataset,
    steps.train,
    steps.export,
    steps.evaluate,
    steps.gate_step,
    steps.register,
    steps.not_registered,
]


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_runs_in_the_project_image_without_installs(component: Callable[..., object]) -> None:
    container = component.component_spec.implementation.container  # type: ignore[attr-defined]
    assert container.image == steps.QCLOOP_IMAGE
    assert "pip install" not in " ".join(container.command + (container.args or []))


def test_gate_step_runs_the_plain_gate() -> None:
    metrics = EvalMetrics(map50=0.8, map50_95=0.4, precision=0.7, recall=0.6, images=9)
    passed, reason = steps.gate_step.python_func(
        metrics_json=metrics.to_json(), min_map50_95=0.5, tolerance=0.0
    )
    assert passed is False and "< threshold 0.5000" in reason


def test_outputs_are_named_for_the_pipeline() -> None:
    assert set(steps.gate_step.component_spec.outputs) == {"passed", "reason"}
    assert set(steps.evaluate.component_spec.outputs) == {
        "Output",
        "metrics",
        "report",
        "image_stats",
    }
    assert set(steps.train.component_spec.outputs) == {"model"}

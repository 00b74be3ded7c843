"""Running the pipelines on this machine with the settings' services (kfp.local)."""

from __future__ import annotations

from typing import Any

from qcloop.params import training_params
from qcloop.settings import Settings


def run_training(settings: Settings, *, dataset_version: str, **values: Any) -> dict[str, Any]:
    """Run the training pipeline locally against ``settings``; see ``run_local`` for the result.

    ``values``: training parameters (``qcloop.params.TrainingParams``; the rest keep
    their defaults), checked before anything runs.
    """
    from pipelines.training import run_local

    params = training_params(values)
    return run_local(
        pipeline_root=settings.home.resolve() / "kfp",
        settings=settings,
        dataset_version=dataset_version,
        **params.model_dump(),
    )

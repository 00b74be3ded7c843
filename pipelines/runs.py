"""Running the pipelines on this machine with the settings' services (kfp.local)."""

from __future__ import annotations

from typing import Any

from qcloop.settings import Settings


def run_training(
    settings: Settings,
    *,
    dataset_version: str,
    epochs: int,
    imgsz: int,
    batch: int = 16,
    min_map50_95: float = 0.3,
    seed: int = 0,
    dynamic_onnx: bool = False,
    **params: Any,
) -> dict[str, Any]:
    """Run the training pipeline locally against ``settings``; see ``run_local`` for the result.

    ``params``: further pipeline parameters (model_size, patience, device, int8, approval, ...).
    """
    from pipelines.training import run_local

    return run_local(
        pipeline_root=settings.home.resolve() / "kfp",
        settings=settings,
        dataset_version=dataset_version,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        min_map50_95=min_map50_95,
        dynamic_onnx=dynamic_onnx,
        **params,
    )

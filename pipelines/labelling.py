"""The labelling pipeline: sync in -> (people label in Label Studio) -> round -> training.

Each run moves new raw images (edge feedback included) into Label Studio as
tasks, then turns the verified labels into the next dataset version; when a new
version appears, training runs on it:

- on Kubeflow, ``labelling_and_training`` (what ``compile_pipeline`` writes) nests
  the training pipeline under a condition on the round's output; the chart's
  labelling CronJob or a KFP recurring run starts it on a schedule;
- locally, ``kfp.local`` (2.17) cannot resolve a condition around a nested
  pipeline, so ``run_local`` runs ``labelling_pipeline`` and then chains the
  training pipeline in Python when a version was made.
"""

from pathlib import Path
from typing import Any, NamedTuple

from kfp import dsl

from pipelines.ir import compile_to
from pipelines.local import run_locally
from pipelines.training import platform_env, training_pipeline
from qcloop.cluster import SECRET_ENV
from qcloop.params import DEFAULTS
from qcloop.settings import Settings
from qcloop_labelling import kfp_components as steps

PIPELINE_NAME = "qcloop-labelling"
LOCAL_ROOT = Path(".qcloop") / "kfp-labelling"


class LabellingOutputs(NamedTuple):
    """What a run returns: whether a dataset version was made, and which."""

    created: bool
    version: str


@dsl.pipeline(name=PIPELINE_NAME, description="Label Studio in and out: next dataset version.")
def labelling_pipeline() -> LabellingOutputs:
    """sync in -> round (a new dataset version if anything is new)."""
    synced = steps.sync_in_step()
    synced.set_caching_options(False)  # reads live systems: never cached
    platform_env(synced, SECRET_ENV)
    rounded = steps.round_step().after(synced)
    rounded.set_caching_options(False)
    platform_env(rounded, SECRET_ENV)
    return LabellingOutputs(created=rounded.outputs["created"], version=rounded.outputs["version"])


@dsl.pipeline(name=f"{PIPELINE_NAME}-and-training", description="Labelling, then training.")
def labelling_and_training(
    epochs: int = DEFAULTS.epochs,
    imgsz: int = DEFAULTS.imgsz,
    min_map50_95: float = DEFAULTS.min_map50_95,
    tolerance: float = DEFAULTS.tolerance,
) -> LabellingOutputs:
    """sync in -> round -> training pipeline if the round made a new dataset version."""
    rounded = labelling_pipeline()
    with dsl.If(rounded.outputs["created"] == True, name="new-version"):  # noqa: E712
        training_pipeline(
            dataset_version=rounded.outputs["version"],
            epochs=epochs,
            imgsz=imgsz,
            min_map50_95=min_map50_95,
            tolerance=tolerance,
        )
    return LabellingOutputs(created=rounded.outputs["created"], version=rounded.outputs["version"])


def compile_pipeline(out: Path, settings: Settings | None = None) -> Path:
    """Compile the pipeline to KFP IR YAML at ``out`` (for the Kubeflow UI or API)."""
    return compile_to(labelling_and_training, PIPELINE_NAME, out, settings)


def run_local(
    *,
    pipeline_root: Path | None = None,
    settings: Settings | None = None,
    train: bool = True,
    **training_params: Any,
) -> dict[str, Any]:
    """Labelling pipeline with ``kfp.local``, then training on a new version (chained here).

    Returns ``{"created": bool, "version": str, "training": <run_local result or None>}``.
    """
    from pipelines.training import run_local as run_training_local

    root = Path(pipeline_root or LOCAL_ROOT)
    outputs = run_locally(
        labelling_pipeline, PIPELINE_NAME, pipeline_root=root, settings=settings, params={}
    )
    result: dict[str, Any] = {
        "created": bool(outputs["created"]),
        "version": str(outputs["version"]),
        "training": None,
    }
    if result["created"] and train:
        result["training"] = run_training_local(
            pipeline_root=root,
            settings=settings,
            dataset_version=result["version"],
            **training_params,
        )
    return result

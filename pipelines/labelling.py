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

from pipelines.local import compile_to, run_locally
from pipelines.training import credentials, training_pipeline
from qcloop.settings import Settings
from qcloop_labelling import kfp_components as steps

PIPELINE_NAME = "qcloop-labelling"
LOCAL_ROOT = Path(".qcloop") / "kfp-labelling"


class LabellingOutputs(NamedTuple):
    """What a run returns: whether a dataset version was made, and which."""

    created: bool
    version: str


@dsl.pipeline(name=PIPELINE_NAME, description="Label Studio in and out: next dataset version.")
def labelling_pipeline(
    settings_json: str = "{}", secret_name: str = "qcloop-platform"
) -> LabellingOutputs:
    """sync in -> round (a new dataset version if anything is new)."""
    synced = steps.sync_in_step(settings_json=settings_json)
    synced.set_caching_options(False)  # reads live systems: never cached
    credentials(synced, secret_name)
    rounded = steps.round_step(settings_json=settings_json).after(synced)
    rounded.set_caching_options(False)
    credentials(rounded, secret_name)
    return LabellingOutputs(created=rounded.outputs["created"], version=rounded.outputs["version"])


@dsl.pipeline(name=f"{PIPELINE_NAME}-and-training", description="Labelling, then training.")
def labelling_and_training(
    settings_json: str = "{}",
    epochs: int = 30,
    imgsz: int = 480,
    min_map50_95: float = 0.3,
    tolerance: float = 0.02,
    tracking_uri: str = "sqlite:///.qcloop/mlflow.db",
    model_name: str = "qcloop-detector",
    code_version: str = "unknown",
    secret_name: str = "qcloop-platform",
) -> LabellingOutputs:
    """sync in -> round -> training pipeline if the round made a new dataset version."""
    rounded = labelling_pipeline(settings_json=settings_json, secret_name=secret_name)
    with dsl.If(rounded.outputs["created"] == True, name="new-version"):  # noqa: E712
        training_pipeline(
            dataset_version=rounded.outputs["version"],
            settings_json=settings_json,
            epochs=epochs,
            imgsz=imgsz,
            min_map50_95=min_map50_95,
            tolerance=tolerance,
            tracking_uri=tracking_uri,
            model_name=model_name,
            code_version=code_version,
            secret_name=secret_name,
        )
    return LabellingOutputs(created=rounded.outputs["created"], version=rounded.outputs["version"])


def compile_pipeline(out: Path) -> Path:
    """Compile the pipeline to KFP IR YAML at ``out`` (for the Kubeflow UI or API)."""
    return compile_to(labelling_and_training, PIPELINE_NAME, out)


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
        if settings is not None:
            training_params.setdefault("tracking_uri", settings.mlflow.tracking_uri)
            training_params.setdefault("model_name", settings.mlflow.model_name)
        result["training"] = run_training_local(
            pipeline_root=root,
            settings=settings,
            dataset_version=result["version"],
            **training_params,
        )
    return result

"""The training pipeline: dataset version -> YOLOv8 -> ONNX -> evaluation -> gate -> MLflow.

``compile_pipeline`` writes the IR YAML to submit to Kubeflow Pipelines;
``run_local`` runs the same definition on this machine with ``kfp.local``
(one subprocess per step, this interpreter, no containers, no network).
"""

from pathlib import Path
from typing import Any, NamedTuple

from kfp import dsl, kubernetes

from components import kfp_components as steps
from components.train import LATEST
from pipelines.local import compile_to, run_locally
from qcloop.contracts import EvalMetrics, ModelRecord
from qcloop.errors import PipelineError
from qcloop.settings import Settings

PIPELINE_NAME = "qcloop-training"
LOCAL_ROOT = Path(".qcloop") / "kfp"
ROOT = Path(__file__).resolve().parents[1]


class TrainingOutputs(NamedTuple):
    """What a run of the pipeline returns (strings, as KFP passes them)."""

    metrics: str
    gate_passed: bool
    gate_reason: str
    model_record: str


# keys of the platform Secret (the chart's qcloop-platform) -> settings variables of a step
SECRET_ENV = {
    "store-access-key": "QCLOOP_STORE__ACCESS_KEY",
    "store-secret-key": "QCLOOP_STORE__SECRET_KEY",
    "mlflow-username": "MLFLOW_TRACKING_USERNAME",
    "mlflow-password": "MLFLOW_TRACKING_PASSWORD",
    "label-studio-token": "QCLOOP_LABEL_STUDIO__TOKEN",
}


def credentials(task: dsl.PipelineTask, secret_name: Any) -> None:
    """On a cluster, the step gets MinIO and MLflow credentials from a Secret, as env.

    Ignored by ``kfp.local`` (which passes them from the settings instead).
    """
    kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env=SECRET_ENV, optional=True
    )


# /dev/shm of the training pod: a container's default (64 MiB under Docker and containerd)
# is too small for the loader processes that feed a GPU (PyTorch passes their batches
# through shared memory: "DataLoader worker ... killed by signal: Bus error")
TRAIN_SHM_LIMIT = "2Gi"


def placement(task: dsl.PipelineTask, gpu_limit: Any, node_selector: Any, tolerations: Any) -> None:
    """GPU request, node selector and tolerations of the training step (run parameters),
    and a memory-backed /dev/shm for its loader processes."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_limit)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=TRAIN_SHM_LIMIT
    )


@dsl.pipeline(name=PIPELINE_NAME, description="Train, export, evaluate, gate and register.")
def training_pipeline(
    dataset_version: str = LATEST,
    settings_json: str = "{}",
    epochs: int = 30,
    imgsz: int = 480,
    batch: int = 16,
    seed: int = 0,
    min_map50_95: float = 0.3,
    tracking_uri: str = "sqlite:///.qcloop/mlflow.db",
    experiment: str = "qcloop-training",
    model_name: str = "qcloop-detector",
    code_version: str = "unknown",
    tolerance: float = 0.02,
    production_alias: str = "production",
    device: str = "cpu",
    gpu_limit: int = 0,
    node_selector: dict = {},  # noqa: B006 - KFP needs a literal default
    tolerations: list = [],  # noqa: B006
    secret_name: str = "qcloop-platform",
    int8: bool = False,
    dynamic_onnx: bool = False,
    model_size: str = "n",
    patience: int = 50,
    approval: str = "manual",
    recipe: str = "reference",
    average_last: int = 0,
) -> TrainingOutputs:
    """version -> load -> train -> export -> evaluate (+ production) -> gate -> register."""
    # "latest" (a recurring run) becomes the newest version when the run starts
    resolved = steps.resolve_dataset_version(version=dataset_version, settings_json=settings_json)
    resolved.set_caching_options(False)  # a new version may have come since the last run
    credentials(resolved, secret_name)
    version = resolved.output
    data = steps.load_dataset(version=version, settings_json=settings_json)
    # versions are immutable (their DVC pointer is content-addressed): cache on the version
    data.set_caching_options(True)
    credentials(data, secret_name)
    dataset = data.outputs["dataset"]
    trained = steps.train(
        dataset=dataset,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        device=device,
        model_size=model_size,
        patience=patience,
        recipe=recipe,
        average_last=average_last,
    )
    placement(trained, gpu_limit, node_selector, tolerations)
    onnx = steps.export(
        model=trained.outputs["model"], dataset=dataset, imgsz=imgsz, dynamic=dynamic_onnx
    )
    onnx_model = onnx.outputs["onnx_model"]
    scored = steps.evaluate(onnx_model=onnx_model, dataset=dataset, imgsz=imgsz)
    production = steps.champion(
        dataset=dataset, tracking_uri=tracking_uri, model_name=model_name, alias=production_alias
    )
    production.set_caching_options(False)  # the alias may have moved since the last run
    credentials(production, secret_name)
    decided = steps.gate_step(
        metrics_json=scored.outputs["Output"],
        min_map50_95=min_map50_95,
        champion_json=production.output,
        tolerance=tolerance,
    )
    with dsl.If(decided.outputs["passed"] == True, name="gate-passed"):  # noqa: E712
        registered = steps.register(
            onnx_model=onnx_model,
            dataset=dataset,
            report=scored.outputs["report"],
            metrics_json=scored.outputs["Output"],
            tracking_uri=tracking_uri,
            experiment=experiment,
            model_name=model_name,
            dataset_version=version,
            code_version=code_version,
            imgsz=imgsz,
            epochs=epochs,
            batch=batch,
            seed=seed,
            pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            model_size=model_size,
            patience=patience,
            recipe=recipe,
            average_last=average_last,
        )
        registered.set_caching_options(False)  # a side effect: never skip it
        credentials(registered, secret_name)
        with dsl.If(approval == "auto", name="auto-approval"):
            approved = steps.approve_step(
                record_json=registered.output,
                tracking_uri=tracking_uri,
                alias=production_alias,
                gate_reason=decided.outputs["reason"],
                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            )
            approved.set_caching_options(False)
            credentials(approved, secret_name)
        with dsl.If(int8 == True, name="int8"):  # noqa: E712
            quantized = steps.quantize(
                onnx_model=onnx_model,
                dataset=dataset,
                imgsz=imgsz,
                record_json=registered.output,
                tracking_uri=tracking_uri,
            )
            quantized.set_caching_options(False)
            credentials(quantized, secret_name)
    with dsl.Else(name="gate-failed"):
        skipped = steps.not_registered(reason=decided.outputs["reason"])
    return TrainingOutputs(
        metrics=scored.outputs["Output"],
        gate_passed=decided.outputs["passed"],
        gate_reason=decided.outputs["reason"],
        model_record=dsl.OneOf(registered.output, skipped.output),
    )


def compile_pipeline(out: Path) -> Path:
    """Compile the pipeline to KFP IR YAML at ``out`` (for the Kubeflow UI or API)."""
    return compile_to(training_pipeline, PIPELINE_NAME, out)


APPROVAL_MODES = ("auto", "manual")


def check_params(params: dict[str, Any]) -> None:
    """``PipelineError`` for a parameter value the pipeline cannot use (before any step runs).

    A run started from the Kubeflow UI comes through no client: there the train step
    refuses an unknown model size, and an approval other than ``auto`` moves no alias.
    """
    from components.train import model_config, recipe_members

    if "model_size" in params:
        model_config(str(params["model_size"]))
    if "recipe" in params:
        recipe_members(str(params["recipe"]))
    if int(params.get("average_last", 0)) < 0:
        raise PipelineError(
            f"average_last {params['average_last']}: use 0 (off) or the number of last "
            "epochs whose weights are averaged"
        )
    approval = params.get("approval", "manual")
    if approval not in APPROVAL_MODES:
        raise PipelineError(
            f"approval {approval!r}: use auto (the pipeline moves the production alias when "
            "the gate passes) or manual (`qcloop model approve` does)"
        )


def run_local(
    *, pipeline_root: Path | None = None, settings: Settings | None = None, **params: Any
) -> dict[str, Any]:
    """Run the pipeline with ``kfp.local`` (subprocesses of this interpreter); return its outputs.

    ``params`` are the pipeline parameters. ``settings``, if given, becomes
    ``settings_json`` and its secrets reach the steps as ``QCLOOP_*`` variables of
    their environment, never as parameters. The result is JSON-ready:
    ``registered``, ``gate_passed``, ``gate_reason``, ``metrics`` (``EvalMetrics``)
    and ``model_record`` (``ModelRecord``, or ``None`` when the gate said no).
    """
    from components.registry import code_version

    check_params(params)
    params.setdefault("code_version", code_version())
    outputs = run_locally(
        training_pipeline,
        PIPELINE_NAME,
        pipeline_root=pipeline_root or LOCAL_ROOT,
        settings=settings,
        params=params,
    )
    return _result(outputs)


def _result(outputs: dict[str, Any]) -> dict[str, Any]:
    """Validate the pipeline outputs against the contracts; return them JSON-ready."""
    metrics = EvalMetrics.from_json(outputs["metrics"], source="evaluate step")
    text = outputs["model_record"]
    record = ModelRecord.from_json(text, source="register step") if text else None
    return {
        "registered": record is not None,
        "gate_passed": bool(outputs["gate_passed"]),
        "gate_reason": str(outputs["gate_reason"]),
        "metrics": metrics.model_dump(mode="json"),
        "model_record": record.model_dump(mode="json") if record else None,
    }


if __name__ == "__main__":
    compile_pipeline(ROOT / "pipelines" / "compiled" / "training.yaml")

"""The training pipeline: dataset version -> YOLOv8 -> ONNX -> evaluation -> gate -> MLflow.

``compile_pipeline`` writes the IR YAML to submit to Kubeflow Pipelines;
``run_local`` runs the same definition on this machine with ``kfp.local``
(one subprocess per step, this interpreter, no containers, no network).
"""

from pathlib import Path
from typing import Any

from kfp import dsl, kubernetes

from components import kfp_components as steps
from components.attempts import LATEST
from pipelines.ir import compile_to
from pipelines.local import run_locally
from qcloop.cluster import (
    CONFIG_ENV,
    PLATFORM_OBJECT,
    REGISTRY_SECRET_ENV,
    STORE_SECRET_ENV,
)
from qcloop.contracts import EvalMetrics, ModelRecord
from qcloop.params import DEFAULTS, TrainingParams, training_params
from qcloop.settings import Settings

PIPELINE_NAME = "qcloop-training"
LOCAL_ROOT = Path(".qcloop") / "kfp"
ROOT = Path(__file__).resolve().parents[1]


def platform_env(task: dsl.PipelineTask, secrets: dict[str, str] | None = None) -> None:
    """On a cluster, the step reads the platform's settings (and ``secrets``; default: the
    store's and MLflow's credentials) from the ConfigMap and Secret ``qcloop-platform`` of
    its namespace, as environment variables.

    Ignored by ``kfp.local``, which gives the steps the caller's settings instead.
    """
    kubernetes.use_config_map_as_env(
        task, config_map_name=PLATFORM_OBJECT, config_map_key_to_env={k: k for k in CONFIG_ENV}
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=PLATFORM_OBJECT,
        secret_key_to_env=REGISTRY_SECRET_ENV if secrets is None else secrets,
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
    epochs: int = DEFAULTS.epochs,
    imgsz: int = DEFAULTS.imgsz,
    batch: int = DEFAULTS.batch,
    seed: int = DEFAULTS.seed,
    min_map50_95: float = DEFAULTS.min_map50_95,
    tolerance: float = DEFAULTS.tolerance,
    device: str = DEFAULTS.device,
    gpu_limit: int = DEFAULTS.gpu_limit,
    node_selector: dict = {},  # noqa: B006 - KFP needs a literal default
    tolerations: list = [],  # noqa: B006
    int8: bool = DEFAULTS.int8,
    dynamic_onnx: bool = DEFAULTS.dynamic_onnx,
    model_size: str = DEFAULTS.model_size,
    patience: int = DEFAULTS.patience,
    approval: str = DEFAULTS.approval,
    recipe: str = DEFAULTS.recipe,
) -> str:
    """plan -> load -> train -> export -> evaluate (+ production) -> gate -> register.

    Returns the run's outcome as JSON (``RunOutcome``). Endpoints and credentials are
    the cluster's (the ``qcloop-platform`` ConfigMap and Secret), never parameters.
    """
    # "latest" (a recurring run) becomes the newest version when the run starts; the
    # same version, code and parameters as an ended run train nothing
    planned = steps.plan(
        version=dataset_version,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        model_size=model_size,
        patience=patience,
        recipe=recipe,
        dynamic_onnx=dynamic_onnx,
        int8=int8,
        min_map50_95=min_map50_95,
        tolerance=tolerance,
    )
    planned.set_caching_options(False)  # a new version may have come since the last run
    platform_env(planned)
    version = planned.outputs["version"]
    key = planned.outputs["key"]
    with dsl.If(planned.outputs["fresh"] == True, name="something-new"):  # noqa: E712
        data = steps.load_dataset(version=version)
        # versions are immutable (their DVC pointer is content-addressed): cache on the version
        data.set_caching_options(True)
        platform_env(data, STORE_SECRET_ENV)  # the DVC remote only
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
            gpu_limit=gpu_limit,  # also makes the condition pass it on to the GPU request
        )
        placement(trained, gpu_limit, node_selector, tolerations)
        onnx = steps.export(
            model=trained.outputs["model"], dataset=dataset, imgsz=imgsz, dynamic=dynamic_onnx
        )
        onnx_model = onnx.outputs["onnx_model"]
        scored = steps.evaluate(onnx_model=onnx_model, dataset=dataset, imgsz=imgsz)
        metrics_json = scored.outputs["Output"]
        production = steps.champion(dataset=dataset, image_stats=scored.outputs["image_stats"])
        production.set_caching_options(False)  # the alias may have moved since the last run
        platform_env(production)
        decided = steps.gate_step(
            metrics_json=metrics_json,
            min_map50_95=min_map50_95,
            champion_json=production.output,
            tolerance=tolerance,
        )
        with dsl.If(decided.outputs["passed"] == True, name="gate-passed"):  # noqa: E712
            registered = steps.register(
                onnx_model=onnx_model,
                dataset=dataset,
                report=scored.outputs["report"],
                metrics_json=metrics_json,
                dataset_version=version,
                training_key=key,
                params_json=planned.outputs["params_json"],
                imgsz=imgsz,
                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            )
            registered.set_caching_options(False)  # a side effect: never skip it
            platform_env(registered)
            with dsl.If(approval == "auto", name="auto-approval"):
                approved = steps.approve_step(
                    record_json=registered.output,
                    gate_reason=decided.outputs["reason"],
                    pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                )
                approved.set_caching_options(False)
                platform_env(approved)
            with dsl.If(int8 == True, name="int8"):  # noqa: E712
                quantized = steps.quantize(
                    onnx_model=onnx_model,
                    dataset=dataset,
                    imgsz=imgsz,
                    record_json=registered.output,
                )
                quantized.set_caching_options(False)
                platform_env(quantized)
        with dsl.Else(name="gate-failed"):
            refused = steps.not_registered(
                reason=decided.outputs["reason"],
                metrics_json=metrics_json,
                dataset_version=version,
                training_key=key,
            )
            refused.set_caching_options(False)
            platform_env(refused)
        ended = steps.outcome(
            metrics_json=metrics_json,
            gate_passed=decided.outputs["passed"],
            gate_reason=decided.outputs["reason"],
            model_record=dsl.OneOf(registered.output, refused.output),
        )
        ended.set_caching_options(False)
    with dsl.Else(name="nothing-new"):
        skipped = steps.nothing_new(reason=planned.outputs["reason"])
        skipped.set_caching_options(False)
    return dsl.OneOf(ended.output, skipped.output)


def compile_pipeline(out: Path, settings: Settings | None = None) -> Path:
    """Compile the pipeline to KFP IR YAML at ``out`` (for the Kubeflow UI or API)."""
    return compile_to(training_pipeline, PIPELINE_NAME, out, settings)


# run parameters that place the train step's pod, not part of TrainingParams
PLACEMENT = ("dataset_version", "node_selector", "tolerations")


def check_params(params: dict[str, Any]) -> TrainingParams:
    """The run's training parameters, or ``PipelineError`` for a value the pipeline cannot
    use (before any step runs; a run started from the Kubeflow UI is checked by its plan
    step instead)."""
    from components.recipes import recipe_members

    checked = training_params(params, extra=PLACEMENT)
    recipe_members(checked.recipe)
    return checked


def run_local(
    *, pipeline_root: Path | None = None, settings: Settings | None = None, **params: Any
) -> dict[str, Any]:
    """Run the pipeline with ``kfp.local`` (subprocesses of this interpreter); return its outcome.

    ``params`` are the pipeline parameters. ``settings`` (default: loaded as the CLI
    does) reach the steps as ``QCLOOP_*`` variables of their environment, as the
    chart's ConfigMap and Secret do on a cluster. The result is JSON-ready:
    ``trained``, ``registered``, ``gate_passed``, ``gate_reason``, ``metrics``
    (``EvalMetrics``, None when nothing was trained) and ``model_record``
    (``ModelRecord``, or None when nothing was registered).
    """
    checked = check_params(params)
    if checked.device != "cpu" and not checked.gpu_limit:  # no pod here: the device is the GPU
        params["gpu_limit"] = 1
    outputs = run_locally(
        training_pipeline,
        PIPELINE_NAME,
        pipeline_root=pipeline_root or LOCAL_ROOT,
        settings=settings,
        params=params,
    )
    return outcome_of(outputs["Output"])


def outcome_of(text: str) -> dict[str, Any]:
    """The pipeline's JSON outcome, validated against the contracts, JSON-ready."""
    import json

    found = json.loads(text)
    metrics = found.get("metrics")
    record = found.get("model_record")
    checked = ModelRecord.model_validate(record) if record else None
    return {
        "trained": bool(found["trained"]),
        "registered": checked is not None,
        "gate_passed": bool(found["gate_passed"]),
        "gate_reason": str(found["gate_reason"]),
        "metrics": EvalMetrics.model_validate(metrics).model_dump(mode="json") if metrics else None,
        "model_record": checked.model_dump(mode="json") if checked else None,
    }


if __name__ == "__main__":
    compile_pipeline(ROOT / "pipelines" / "compiled" / "training.yaml")

"""Kubeflow Pipelines components of the training room: thin adapters over ``components.*``.

Each component unpacks artifact paths and parameters, calls one plain function
and packs the result. KFP ships only the function's own source to the
container, so every import sits inside the body (and this module itself cannot
be imported there: ``kfp.dsl`` has no ``component`` at run time). The image
(``QCLOOP_IMAGE``, built from this project) already holds qcloop, ultralytics,
mlflow and kfp: nothing is pip-installed at run time (``install_kfp_package=False``).

Settings (endpoints, credentials) come from the step's environment: on a cluster the
chart's ConfigMap and Secret ``qcloop-platform`` of the run's namespace
(``qcloop.settings.step_settings``), locally the caller's settings (``pipelines.local``).
No endpoint travels as a run parameter.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from qcloop import QCLOOP_IMAGE

_OPTIONS = {"base_image": QCLOOP_IMAGE, "install_kfp_package": False}


@dsl.component(**_OPTIONS)
def plan(
    version: str,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    model_size: str,
    patience: int,
    recipe: str,
    dynamic_onnx: bool,
    int8: bool,
    min_map50_95: float,
    tolerance: float,
) -> NamedTuple("Plan", version=str, key=str, fresh=bool, reason=str, params_json=str):
    """Check the parameters; resolve ``latest`` to the newest dataset version; say whether
    anything is new.

    A run started from the Kubeflow UI comes through no client: a parameter the pipeline
    cannot use fails here, before any data is loaded. The same dataset version, code and
    parameters as a finished run (registered or refused by the gate) would only train the
    same model again: ``fresh`` is then False and the run registers and releases nothing.
    ``params_json`` is how the model is trained, for the register step's record.
    """
    from collections import namedtuple

    from components.attempts import plan_run
    from qcloop.params import training_params
    from qcloop.settings import step_settings

    params = training_params(
        {
            "epochs": epochs,
            "imgsz": imgsz,
            "batch": batch,
            "seed": seed,
            "model_size": model_size,
            "patience": patience,
            "recipe": recipe,
            "dynamic_onnx": dynamic_onnx,
            "int8": int8,
            "min_map50_95": min_map50_95,
            "tolerance": tolerance,
        }
    )
    found = plan_run(step_settings(), version, params)
    return namedtuple("Plan", ["version", "key", "fresh", "reason", "params_json"])(*found)


@dsl.component(**_OPTIONS)
def load_dataset(version: str, dataset: Output[Dataset]):
    """Materialise dataset ``version`` (DVC) into the ``dataset`` artifact folder."""
    from pathlib import Path

    from components.data import materialize_version
    from qcloop.settings import step_settings

    manifest = materialize_version(step_settings(), version, Path(dataset.path))
    dataset.metadata["version"] = manifest.version
    dataset.metadata["class_names"] = manifest.class_names
    for split, counts in manifest.counts.items():
        dataset.metadata[f"{split}_images"] = counts.images


@dsl.component(**_OPTIONS)
def train(
    dataset: Input[Dataset],
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    device: str,
    model_size: str,
    patience: int,
    recipe: str,
    gpu_limit: int,
    model: Output[Model],
):
    """Train YOLOv8n or s (``model_size``) on the dataset; ``model`` is its ``best.pt``.

    ``gpu_limit`` is the GPUs the pod asked for: a GPU ``device`` without one is refused
    at once, with what to set, instead of a CUDA error after the data is loaded.

    ``recipe`` names the hyperparameters (``components.recipes.RECIPES``). Several
    recipes joined by commas (``reference,scratch``) train one model each (on a GPU all
    at once, on the CPU one after the other): ``model`` is then a folder of
    ``member-K.pt`` that the export step pools into one ONNX graph. A recipe named again
    trains with the next seed (``reference,scratch,reference``).
    """
    from pathlib import Path

    from components.train import check_device, train_step

    check_device(device, gpu_limit)
    metadata = train_step(
        Path(dataset.path),
        Path(model.path),
        recipe=recipe,
        seed=seed,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        model_size=model_size,
        patience=patience,
    )
    model.metadata.update(metadata)


@dsl.component(**_OPTIONS)
def export(
    model: Input[Model],
    dataset: Input[Dataset],
    imgsz: int,
    onnx_model: Output[Model],
    dynamic: bool = False,
):
    """Export the trained weights to ONNX (1x3ximgszximgsz, or free height/width with
    ``dynamic``: the edge agent then runs 3:2 frames at 480x320) and check it against them."""
    from pathlib import Path

    from components.data import load_manifest
    from components.export import export_onnx
    from components.parity import check_parity

    weights = Path(model.path)
    if weights.is_dir():  # an ensemble (the train step's several recipes): pool the members
        from components.ensemble import export_ensemble, member_weights

        members = member_weights(weights)
        export_ensemble(members, Path(onnx_model.path), imgsz=imgsz, dynamic=dynamic)
    else:
        members = [weights]
        export_onnx(weights, Path(onnx_model.path), imgsz=imgsz, dynamic=dynamic)
    root = Path(dataset.path)
    images = [root / i.file for i in load_manifest(root).images if i.split == "test"][:10]
    # an ensemble's graph must give the members' PyTorch outputs, concatenated
    parity = check_parity(members, Path(onnx_model.path), images, imgsz=imgsz)
    onnx_model.metadata.update(
        {
            "format": "onnx",
            "imgsz": imgsz,
            "dynamic": dynamic,
            "members": len(members),
            "parity_boxes": parity.boxes,
            "parity_matched": parity.matched,
            "parity_worst_box_px": parity.worst_box_px,
            "parity_worst_score": parity.worst_score,
        }
    )


@dsl.component(**_OPTIONS)
def evaluate(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    imgsz: int,
    metrics: Output[Metrics],
    report: Output[HTML],
    image_stats: Output[Artifact],
) -> str:
    """Evaluate the ONNX on the test split; return ``EvalMetrics`` JSON, log them as metrics,
    render the visual report (true vs predicted boxes) for the Kubeflow UI, and keep each
    image's statistics (``image_stats``) for the paired comparison with production."""
    from pathlib import Path

    from components.evaluate import evaluate_onnx
    from components.report import render_report

    result = evaluate_onnx(
        Path(onnx_model.path), Path(dataset.path), imgsz=imgsz, image_stats=Path(image_stats.path)
    )
    render_report(
        Path(onnx_model.path), Path(dataset.path), Path(report.path), imgsz=imgsz, metrics=result
    )
    for name, value in result.model_dump(exclude_none=True).items():
        metrics.log_metric(name, value)
    return result.to_json()


@dsl.component(**_OPTIONS)
def champion(dataset: Input[Dataset], image_stats: Input[Artifact]) -> str:
    """The production model on this test split, paired with the challenger (its per-image
    ``image_stats``): JSON ``{"metrics": EvalMetrics, "paired": Paired}``; "" if there is
    no production model."""
    from pathlib import Path

    from components.champion import compare_with_production, comparison_json
    from qcloop.settings import step_settings

    mlflow = step_settings().mlflow
    found = compare_with_production(
        mlflow.tracking_uri,
        mlflow.model_name,
        mlflow.production_alias,
        Path(dataset.path),
        Path(image_stats.path),
    )
    return comparison_json(found)


@dsl.component(**_OPTIONS)
def gate_step(
    metrics_json: str, min_map50_95: float, tolerance: float, champion_json: str = ""
) -> NamedTuple("GateOutputs", passed=bool, reason=str):
    """Decide whether the model may be registered (threshold, then champion/challenger:
    ``champion_json`` is the champion step's output)."""
    import logging
    from collections import namedtuple

    from components.gate import decide

    decision = decide(metrics_json, champion_json, min_map50_95=min_map50_95, tolerance=tolerance)
    logging.getLogger("components.gate").info("passed=%s: %s", decision.passed, decision.reason)
    return namedtuple("GateOutputs", ["passed", "reason"])(decision.passed, decision.reason)


@dsl.component(**_OPTIONS)
def register(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    report: Input[HTML],
    metrics_json: str,
    dataset_version: str,
    training_key: str,
    params_json: str,
    imgsz: int,
    pipeline_run: str = "",
) -> str:
    """Register the ONNX in MLflow; return the ``ModelRecord`` JSON.

    ``params_json``: how the model was trained (the plan step's), kept as the MLflow
    run's parameters; ``imgsz`` is the ONNX input size.
    """
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from components.data import load_manifest
    from components.provenance import code_version
    from components.registry import register_model
    from qcloop.contracts import EvalMetrics
    from qcloop.settings import step_settings

    mlflow = step_settings().mlflow
    manifest = load_manifest(Path(dataset.path))
    staged = Path(tempfile.mkdtemp(prefix="qcloop-report-")) / "report.html"
    shutil.copyfile(report.path, staged)
    record = register_model(
        tracking_uri=mlflow.tracking_uri,
        experiment=mlflow.experiment,
        model_name=mlflow.model_name,
        onnx_path=Path(onnx_model.path),
        metrics=EvalMetrics.from_json(metrics_json),
        params=json.loads(params_json),
        dataset_version=dataset_version,
        code_version=code_version(),
        class_names=manifest.class_names,
        input_size=imgsz,
        extra_artifacts=(staged,),
        pipeline_run=pipeline_run,
        training_key=training_key,
        parent_dataset_version=manifest.parent or "",
    )
    shutil.rmtree(staged.parent, ignore_errors=True)
    return record.to_json()


@dsl.component(**_OPTIONS)
def quantize(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    imgsz: int,
    record_json: str,
    int8_model: Output[Model],
) -> str:
    """INT8 variant of the registered model (stem, head float), scored and registered beside it."""
    from pathlib import Path

    from components.data import load_manifest
    from components.evaluate import evaluate_onnx
    from components.quantize import quantize_int8
    from components.registry import attach_int8
    from qcloop.contracts import ModelRecord
    from qcloop.settings import step_settings

    record = ModelRecord.from_json(record_json)
    root = Path(dataset.path)
    train = [root / i.file for i in load_manifest(root).images if i.split == "train"][:64]
    quantize_int8(Path(onnx_model.path), Path(int8_model.path), train, imgsz=imgsz)
    metrics = evaluate_onnx(Path(int8_model.path), root, imgsz=imgsz)
    int8_model.metadata.update({"format": "onnx", "variant": "int8", "imgsz": imgsz})
    return attach_int8(
        step_settings().mlflow.tracking_uri,
        record.name,
        record.version,
        Path(int8_model.path),
        metrics,
    ).to_json()


@dsl.component(**_OPTIONS)
def approve_step(record_json: str, gate_reason: str, pipeline_run: str = "") -> str:
    """Approval mode ``auto``: point the production alias at the registered version, audited."""
    from components.audit import approve
    from qcloop.contracts import ModelRecord
    from qcloop.settings import step_settings

    mlflow = step_settings().mlflow
    record = ModelRecord.from_json(record_json)
    return approve(
        tracking_uri=mlflow.tracking_uri,
        model_name=record.name,
        version=record.version,
        alias=mlflow.production_alias,
        approved_by=f"pipeline:{pipeline_run or 'local'}",
        reason=f"auto approval: {gate_reason}",
    ).to_json()


@dsl.component(**_OPTIONS)
def not_registered(reason: str, metrics_json: str, dataset_version: str, training_key: str) -> str:
    """The gate said no: register nothing, keep the refusal (MLflow run) so that the same
    data, code and parameters are not trained again; return an empty record."""
    import logging

    from components.attempts import record_refusal
    from qcloop.contracts import EvalMetrics
    from qcloop.settings import step_settings

    logging.getLogger("components.gate").info("model not registered: %s", reason)
    record_refusal(
        step_settings(),
        training_key=training_key,
        dataset_version=dataset_version,
        reason=reason,
        metrics=EvalMetrics.from_json(metrics_json),
    )
    return ""


@dsl.component(**_OPTIONS)
def outcome(metrics_json: str, gate_passed: bool, gate_reason: str, model_record: str) -> str:
    """What the run did, as one JSON object (``pipelines.training.RunOutcome``)."""
    import json

    return json.dumps(
        {
            "trained": True,
            "gate_passed": gate_passed,
            "gate_reason": gate_reason,
            "metrics": json.loads(metrics_json),
            "model_record": json.loads(model_record) if model_record else None,
        }
    )


@dsl.component(**_OPTIONS)
def nothing_new(reason: str) -> str:
    """Nothing to train: the same data, code and parameters already ran to the end."""
    import json
    import logging

    logging.getLogger("components.attempts").info("nothing new: %s", reason)
    return json.dumps(
        {
            "trained": False,
            "gate_passed": False,
            "gate_reason": reason,
            "metrics": None,
            "model_record": None,
        }
    )

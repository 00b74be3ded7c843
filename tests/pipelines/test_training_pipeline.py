"""The training pipeline: compiles to IR YAML, and runs end to end with kfp.local."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from components.export import onnx_metadata
from components.registry import get_model_record
from pipelines.training import compile_pipeline, run_local
from qcloop.contracts import EvalMetrics, ModelRecord
from qcloop.dataset import import_yolo_folder
from qcloop.errors import NotRegisteredError, PipelineError
from qcloop.settings import MlflowSettings, Settings, StoreSettings
from qcloop.yolo import capture_group

STEPS = [
    "plan",
    "load-dataset",
    "train",
    "export",
    "evaluate",
    "gate-step",
    "register",
    "not-registered",
    "outcome",
    "nothing-new",
]


@pytest.fixture(scope="module")
def yolo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Ultralytics settings in a temp dir, for this process and the step subprocesses; the
    code version the steps record (as the image's QCLOOP_CODE_VERSION on a cluster)."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("YOLO_CONFIG_DIR"):
            mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))
        mp.setenv("QCLOOP_CODE_VERSION", "test-1")
        yield


def _tiny_yolo_folder(src: Path, dest: Path, captures: int) -> Path:
    """Copy the first ``captures`` whole captures (4 crops) of ``src``; 3 give 2 train + 1 test."""
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True)
    shutil.copyfile(src / "classes.txt", dest / "classes.txt")
    groups: dict[str, list[Path]] = {}
    for image in sorted((src / "images").glob("*.jpg")):
        groups.setdefault(capture_group(image.stem), []).append(image)
    for images in [g for g in groups.values() if len(g) == 4][:captures]:
        for image in images:
            shutil.copyfile(image, dest / "images" / image.name)
            label = f"{image.stem}.txt"
            shutil.copyfile(src / "labels" / label, dest / "labels" / label)
    return dest


@pytest.fixture(scope="module")
def dataset_v1(metal_tags: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    """Dataset version v1 (12 real images: 8 train, 4 test) in a DVC workspace under tmp."""
    tmp = tmp_path_factory.mktemp("pipeline")
    folder = _tiny_yolo_folder(metal_tags, tmp / "yolo", 3)
    settings = Settings(
        home=tmp / ".qcloop",
        workspace=tmp / "ws",
        store=StoreSettings(path=tmp / "store"),
        dvc={"remote": str(tmp / "remote")},
    )
    manifest, _ = import_yolo_folder(settings, folder)
    assert (manifest.counts["train"].images, manifest.counts["test"].images) == (8, 4)
    return settings, manifest.version


def _run(settings: Settings, tmp_path: Path, **params: Any) -> dict[str, Any]:
    mlflow = MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", model_name="detector")
    return run_local(
        pipeline_root=tmp_path / "kfp",
        settings=settings.model_copy(update={"mlflow": mlflow}),
        epochs=1,
        imgsz=160,
        batch=4,
        **params,
    )


def test_compiled_yaml_has_every_step_and_the_gate(tmp_path: Path) -> None:
    out = compile_pipeline(tmp_path / "training.yaml")
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "qcloop-training"
    assert {f"comp-{step}" for step in STEPS} <= set(spec["components"])
    conditions = {
        t["triggerPolicy"]["condition"]
        for c in spec["components"].values()
        for t in c.get("dag", {}).get("tasks", {}).values()
        if "triggerPolicy" in t
    }
    for output in ("gate-step-passed", "plan-fresh"):
        condition = f"inputs.parameter_values['pipelinechannel--{output}'] == true"
        assert {condition, f"!({condition})"} <= conditions, conditions
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["min_map50_95"]["defaultValue"] == 0.3
    assert inputs["dataset_version"]["defaultValue"] == "latest"


@pytest.mark.integration
def test_run_local_registers_a_model_that_passes_the_gate(
    yolo_env: None,
    dataset_v1: tuple[Settings, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, version = dataset_v1
    result = _run(
        settings,
        tmp_path,
        dataset_version="latest",  # resolved by the pipeline to the newest version, v1
        min_map50_95=0.0,
        int8=True,
        dynamic_onnx=True,
    )
    assert result["registered"] is True and result["gate_passed"] is True
    record = ModelRecord.model_validate(result["model_record"])
    assert record.metrics == EvalMetrics.model_validate(result["metrics"])
    assert record.metrics.images == 4 and record.input_size == 160
    assert (record.dataset_version, record.code_version) == (version, "test-1")
    stored = get_model_record(f"sqlite:///{tmp_path}/mlflow.db", "detector", "1")
    assert stored.model_copy(update={"int8": None}) == record  # int8 attached after register
    json.dumps(result)  # JSON-ready for the CLI
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logged = {a.path for a in client.list_artifacts(record.run_id)}
    assert {"model", "report.html"} <= logged  # the ONNX and the visual report
    int8 = get_model_record(f"sqlite:///{tmp_path}/mlflow.db", "detector", "1").int8
    assert int8 is not None and int8.size < record.onnx_size  # int8=True added the variant
    # dynamic_onnx=True: both registered ONNX files have a free height and width
    from components.registry import download_onnx
    from edge_agent.inference import Detector

    stored = get_model_record(f"sqlite:///{tmp_path}/mlflow.db", "detector", "1")
    for variant in ("fp32", "int8"):
        onnx_file = download_onnx(
            f"sqlite:///{tmp_path}/mlflow.db", stored, tmp_path / variant, variant
        )
        assert Detector(onnx_file).dynamic, variant
    # once approved, the next run has a champion to beat, scored on the same test split
    from components.audit import approve

    approve(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        model_name="detector",
        version="1",
        approved_by="test",
    )
    # the next run: an ensemble of two scratch-recipe models (the second with the next
    # seed) and a reference one, YOLOv8n with patience 3, with its INT8, approved by the
    # pipeline itself
    again = _run(
        settings,
        tmp_path,
        dataset_version=version,
        min_map50_95=0.0,
        tolerance=0.0,
        model_size="n",
        patience=3,
        approval="auto",
        recipe="scratch,reference,scratch",
        int8=True,
    )
    assert "and >= production" in str(again["gate_reason"]), again["gate_reason"]
    steps = capsys.readouterr()  # the steps' log records, as kfp.local passes them on
    trained = steps.out + steps.err
    assert "ensemble member 1/3: recipe scratch, seed 0" in trained
    assert "ensemble member 3/3: recipe scratch, seed 1" in trained
    assert again["model_record"]["version"] == "2"
    from components.audit import alias_history, lineage

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    moves = alias_history(uri, "detector")
    assert [(m["from"], m["to"], m["by"]) for m in moves] == [
        (None, "1", "test"),
        ("1", "2", moves[1]["by"]),
    ]
    assert moves[1]["by"].startswith("pipeline:") and moves[1]["why"].startswith("auto approval: ")
    assert get_model_record(uri, "detector", "production").version == "2"
    params = lineage(uri, "detector", "2")["params"]
    assert (params["model_size"], params["patience"]) == ("n", "3")
    assert params["recipe"] == "scratch,reference,scratch"
    assert "average_last" not in params and params["seed"] == "0"
    # one ONNX graph holding the three members, and its INT8, each served as any model
    ensemble = get_model_record(uri, "detector", "2")
    for variant in ("fp32", "int8"):
        onnx_file = download_onnx(uri, ensemble, tmp_path / f"ens-{variant}", variant)
        assert onnx_metadata(onnx_file)["qcloop_members"] == 3, variant
        detector = Detector(onnx_file)
        detector.warmup()
        assert detector.raw_output(np.zeros((1, 3, 160, 160), np.float32)).shape == (1, 5, 3 * 525)


@pytest.mark.integration
def test_run_local_registers_nothing_below_the_threshold(
    yolo_env: None, dataset_v1: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, version = dataset_v1
    result = _run(settings, tmp_path, dataset_version=version, min_map50_95=1.0)
    assert result["registered"] is False and result["gate_passed"] is False
    assert result["model_record"] is None
    assert "< threshold 1.0000" in str(result["gate_reason"])
    with pytest.raises(NotRegisteredError, match="'detector': no such registered model"):
        get_model_record(f"sqlite:///{tmp_path}/mlflow.db", "detector", "1")
    # the same data, code and parameters again (a nightly run with nothing new): nothing is
    # trained, registered or released, and the reason says why
    again = _run(settings, tmp_path, dataset_version="latest", min_map50_95=1.0)
    assert (again["trained"], again["registered"], again["metrics"]) == (False, False, None)
    assert f"dataset {version}, code test-1 and these parameters already ran" in str(
        again["gate_reason"]
    )


@pytest.mark.integration
def test_run_local_with_an_unknown_version_names_the_failed_step(
    yolo_env: None,
    dataset_v1: tuple[Settings, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, _ = dataset_v1
    with pytest.raises(PipelineError, match="Inner task failed: 'load-dataset'") as failed:
        _run(settings, tmp_path, dataset_version="v99")
    # the step's own error is in the message, not only somewhere in the log above it
    assert "Its error: DatasetError: dataset version 'v99' does not exist (known: v1)" in str(
        failed.value
    )
    assert (
        "DatasetError: dataset version 'v99' does not exist (known: v1)" in capsys.readouterr().out
    )


def test_the_steps_get_the_callers_settings_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given settings passed by the caller, a stray QCLOOP_* variable and a qcloop.toml
    from pipelines.local import _step_environment, settings_variables
    from qcloop.settings import load_settings

    settings = Settings(
        store=StoreSettings(
            kind="s3", endpoint="http://127.0.0.1:9000", access_key="AK", secret_key="SK"
        ),
        class_names=["scratch", "dent"],
        label_studio={
            "reviewers": ["a@example.com", "b@example.com"],
            "ml_backend": {"url": "http://ml:9090", "password": "pw"},  # a section in a section
        },
    )
    monkeypatch.setenv("QCLOOP_MQTT__FLEET", "stray-fleet")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qcloop.toml").write_text('[mlflow]\nmodel_name = "from-a-file"\n')
    # When a step loads its settings inside the environment the local runner gives it
    with _step_environment(settings_variables(settings, tmp_path)):
        inside = load_settings()
    # Then it has exactly the caller's settings, secrets included, as on a cluster
    assert inside == settings
    assert inside.store.secret_key is not None
    assert inside.store.secret_key.get_secret_value() == "SK"
    assert "QCLOOP_MQTT__FLEET" in os.environ  # put back afterwards

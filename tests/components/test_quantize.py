"""INT8 for the edge: head kept float, calibrated on real images, registered beside the FP32."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from components.audit import approve
from components.export import onnx_metadata
from components.quantize import float_nodes, quantize_int8, quantize_registered
from components.registry import download_onnx, register_model
from components.release import build_release, check_int8_accuracy, choose_variant, model_key
from qcloop.contracts import EvalMetrics, ModelRecord, OnnxVariant
from qcloop.dataset import import_yolo_folder
from qcloop.errors import RegistryError
from qcloop.settings import MlflowSettings, Settings, StoreSettings
from qcloop.storage import open_store, sha256_file
from tests.components.conftest import IMGSZ

pytestmark = pytest.mark.integration


def test_stem_and_head_decoding_stay_float(exported_onnx: Path) -> None:
    keep = float_nodes(exported_onnx)
    assert any("/dfl/" in n for n in keep)  # distribution focal loss decoding
    assert any(n.endswith("cv2.0.2/Conv") for n in keep)  # raw box logits
    assert not any("cv2.0.0" in n for n in keep)  # first head convolutions are quantised
    stem = [n for n in keep if n.startswith("/model.0/")]
    assert {"/model.0/conv/Conv", "/model.0/act/Mul"} <= set(stem)  # the first conv, on the image
    assert not any(n.startswith(("/model.1/", "/model.2/")) for n in keep)  # the backbone is not


def test_int8_model_runs_with_the_same_interface(
    exported_onnx: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    calibration = sorted((tiny_dataset / "images").glob("*.jpg"))
    int8 = quantize_int8(exported_onnx, tmp_path / "int8.onnx", calibration, imgsz=IMGSZ)
    assert int8.stat().st_size < 0.5 * exported_onnx.stat().st_size
    assert onnx_metadata(int8)["names"] == onnx_metadata(exported_onnx)["names"]
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    stem = next(n for n in graph.node if n.name == "/model.0/conv/Conv")
    weights = {i.name for i in graph.initializer}
    assert stem.input[0] == "images" and stem.input[1] in weights  # float input, float weights
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    fp, q = (
        ort.InferenceSession(str(m)).run(None, {"images": x})[0] for m in (exported_onnx, int8)
    )
    assert fp.shape == q.shape


@pytest.fixture
def registered_on_dvc(
    tmp_path: Path, tiny_dataset: Path, exported_onnx: Path
) -> tuple[Settings, ModelRecord]:
    """Dataset v1 in a DVC workspace and a model registered on it."""
    folder = tmp_path / "yolo"
    shutil.copytree(tiny_dataset, folder, ignore=shutil.ignore_patterns("manifest.json"))
    settings = Settings(
        home=tmp_path,
        workspace=tmp_path / "ws",
        store=StoreSettings(path=tmp_path / "store"),
        dvc={"remote": str(tmp_path / "remote")},
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/m.db", model_name="det"),
    )
    manifest, _ = import_yolo_folder(settings, folder, progress=lambda _: None)
    uri = settings.mlflow.tracking_uri
    record = register_model(
        tracking_uri=uri,
        experiment="e",
        model_name="det",
        onnx_path=exported_onnx,
        metrics=EvalMetrics(map50=0, map50_95=0, precision=0, recall=0, images=1),
        params={},
        dataset_version=manifest.version,
        code_version="t",
        class_names=["scratch"],
        input_size=IMGSZ,
        pipeline_run="run-42",
    )
    return settings, record


def test_registered_version_gets_an_int8_variant_and_release(
    tmp_path: Path, registered_on_dvc: tuple[Settings, ModelRecord]
) -> None:
    settings, record = registered_on_dvc
    uri = settings.mlflow.tracking_uri
    # when it is quantised
    quantised = quantize_registered(settings, record.version, calibration=8)
    # then both variants are registered, each with its checked bytes and scores
    assert quantised.int8 is not None and quantised.int8.metrics.images > 0
    int8 = download_onnx(uri, quantised, tmp_path / "dl", "int8")
    assert sha256_file(int8) == quantised.int8.sha256 != quantised.onnx_sha256
    approve(tracking_uri=uri, model_name="det", version=record.version, approved_by="t")
    # an INT8 that lost more than allowed against its FP32 is not shipped (nor copied)
    store = open_store(settings.store)
    key = model_key("det", record.version, "int8")
    with pytest.raises(RegistryError, match="INT8 variant of model det version 1 scores"):
        build_release(settings, released_by="t", variant="int8", max_int8_drop=-1.0)
    assert not store.exists(key)
    message = build_release(settings, released_by="t", variant="int8").message
    assert (message.variant, message.sha256) == ("int8", quantised.int8.sha256)
    assert message.url.endswith("model-int8.onnx") and store.exists(key)
    # by default the bridge chooses, and the release says which and why
    chosen = build_release(settings, released_by="t").message
    assert (chosen.variant, chosen.variant_reason) == choose_variant(quantised)
    assert chosen.sha256 == (
        quantised.int8.sha256 if chosen.variant == "int8" else quantised.onnx_sha256
    )


def test_an_int8_far_below_its_fp32_is_refused(
    registered_on_dvc: tuple[Settings, ModelRecord],
) -> None:
    _, record = registered_on_dvc
    scores = EvalMetrics(map50=0.9, map50_95=0.59, precision=0.9, recall=0.8, images=28)
    fp32 = record.model_copy(update={"metrics": scores})
    int8 = OnnxVariant(
        artifact="model/model-int8.onnx",
        sha256="0" * 64,
        size=1,
        metrics=scores.model_copy(update={"map50_95": 0.47}),
    )
    with pytest.raises(RegistryError, match=r"0\.4700 on the test split, 0\.1200 below its FP32"):
        check_int8_accuracy(fp32.model_copy(update={"int8": int8}))
    check_int8_accuracy(fp32.model_copy(update={"int8": int8}), max_drop=0.15)  # accepted
    near = int8.model_copy(update={"metrics": scores.model_copy(update={"map50_95": 0.575})})
    check_int8_accuracy(fp32.model_copy(update={"int8": near}))  # 0.015 lost: within 0.02
    check_int8_accuracy(fp32)  # no INT8 variant: nothing to check


def test_lineage_leads_back_to_the_exact_images(
    registered_on_dvc: tuple[Settings, ModelRecord],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from pipelines.cli import main

    settings, record = registered_on_dvc
    shutil.rmtree(settings.workspace / "data")  # only the DVC remote has the images now
    for name, value in {
        "QCLOOP_WORKSPACE": settings.workspace,
        "QCLOOP_STORE__PATH": settings.store.path,
        "QCLOOP_DVC__REMOTE": settings.dvc.remote,
        "QCLOOP_MLFLOW__TRACKING_URI": settings.mlflow.tracking_uri,
        "QCLOOP_MLFLOW__MODEL_NAME": "det",
    }.items():
        monkeypatch.setenv(name, str(value))
    assert main(["model", "lineage", f"det/{record.version}", "--images"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["dataset_version"], found["pipeline_run"]) == ("v1", "run-42")
    assert found["environment"]["ultralytics"] and found["environment"]["python"]
    assert len(found["images"]) == 12 and all(len(i["sha256"]) == 64 for i in found["images"])
    # and `model show` takes the same references as lineage and pull
    for ref in (f"det/{record.version}", record.version):
        assert main(["model", "show", ref]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert (shown["name"], shown["version"]) == ("det", record.version)


def test_the_int8_ships_by_default_only_within_a_hundredth_of_its_fp32(
    registered_on_dvc: tuple[Settings, ModelRecord],
) -> None:
    _, record = registered_on_dvc
    scores = EvalMetrics(map50=0.9, map50_95=0.510, precision=0.9, recall=0.8, images=28)
    fp32 = record.model_copy(update={"metrics": scores, "int8": None})

    def with_int8(map50_95: float) -> ModelRecord:
        int8 = OnnxVariant(
            artifact="model/model-int8.onnx",
            sha256="0" * 64,
            size=1,
            metrics=scores.model_copy(update={"map50_95": map50_95}),
        )
        return fp32.model_copy(update={"int8": int8})

    assert choose_variant(fp32) == (
        "fp32",
        "auto: no INT8 variant registered (qcloop model quantize)",
    )
    variant, reason = choose_variant(with_int8(0.508))  # 0.002 lost
    assert variant == "int8" and "INT8 mAP50-95 0.5080 against FP32 0.5100" in reason
    assert choose_variant(with_int8(0.515))[0] == "int8"  # better than its FP32
    variant, reason = choose_variant(with_int8(0.495))  # 0.015 lost
    assert variant == "fp32" and "more than 0.01 below" in reason
    assert choose_variant(with_int8(0.495), "int8") == ("int8", "int8 asked for")

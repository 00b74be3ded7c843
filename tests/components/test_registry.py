"""The registry on a real MLflow (sqlite file): register, look up, approve, download, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from components.audit import approve
from components.provenance import code_version
from components.registry import download_onnx, get_model_record, register_model
from qcloop.contracts import EvalMetrics, ModelRecord
from qcloop.errors import IntegrityError, RegistryError
from qcloop.storage import sha256_file
from tests.services import free_port

METRICS = EvalMetrics(
    map50=0.61,
    map50_95=0.33,
    precision=0.7,
    recall=0.55,
    images=4,
    map50_95_low=0.28,
    map50_95_high=0.39,
    captures=3,
)


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/reg/mlflow.db"


def _register(uri: str, onnx_path: Path, dataset_version: str = "v1") -> ModelRecord:
    return register_model(
        tracking_uri=uri,
        experiment="exp-test",
        model_name="detector",
        onnx_path=onnx_path,
        metrics=METRICS,
        params={"epochs": 1, "imgsz": 160},
        dataset_version=dataset_version,
        code_version="abc1234",
        class_names=["scratch"],
        input_size=160,
    )


def test_code_version_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCLOOP_CODE_VERSION", "1.2.3")
    assert code_version() == "1.2.3"
    monkeypatch.delenv("QCLOOP_CODE_VERSION")
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?|unknown", code_version())


def test_unknown_model_names_model_and_ref(tmp_path: Path) -> None:
    # a model that is not registered at all is named as such, not as a missing version
    for ref in ("3", "@production"):
        with pytest.raises(RegistryError, match="model 'ghost': no such registered model in"):
            get_model_record(_uri(tmp_path), "ghost", ref)


def test_empty_ref_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="empty reference"):
        get_model_record(_uri(tmp_path), "detector", "@")


def test_registering_a_missing_file_says_export_first(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such ONNX file to register; export the model"):
        _register(_uri(tmp_path), tmp_path / "model.onnx")


def test_server_down_says_start_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match="is unreachable; start the MLflow server"):
        get_model_record(uri, "detector", "production")


@pytest.mark.integration
def test_register_get_approve_download(exported_onnx: Path, tmp_path: Path) -> None:
    # given a registered model version
    uri = _uri(tmp_path)
    record = _register(uri, exported_onnx)
    assert record.version == "1" and not record.approved
    assert record.onnx_sha256 == sha256_file(exported_onnx)
    assert record.onnx_size == exported_onnx.stat().st_size
    assert record.metrics == METRICS and record.class_names == ["scratch"]
    assert (record.dataset_version, record.code_version) == ("v1", "abc1234")
    # when it is approved
    approved = approve(tracking_uri=uri, model_name="detector", version="1", approved_by="qa@x")
    # then the alias finds it, with the approval
    assert approved.approved and approved.approved_by == "qa@x"
    assert (
        approved.approved_at is not None and approved.approved_at.utcoffset().total_seconds() == 0
    )
    for ref in ("production", "@production", "1"):
        assert get_model_record(uri, "detector", ref) == approved
    onnx = download_onnx(uri, approved, tmp_path / "dl")
    assert sha256_file(onnx) == record.onnx_sha256
    _check_mlflow_side(uri, record)


def _check_mlflow_side(uri: str, record: ModelRecord) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version("detector", record.version)
    assert json.loads(version.tags["class_names"]) == ["scratch"]
    assert version.tags["input_size"] == "160" and version.tags["approved"] == "true"
    run = client.get_run(record.run_id)
    params = run.data.params
    assert {k: v for k, v in params.items() if not k.startswith("env.")} == {
        "epochs": "1",
        "imgsz": "160",
    }
    assert params["env.ultralytics"] and params["env.onnxruntime"]  # the environment, for lineage
    assert run.data.tags["dataset_version"] == "v1" and run.data.tags["code_version"] == "abc1234"
    assert run.data.tags["parent_dataset_version"] == "none"  # v1 has no parent
    assert [a.path for a in client.list_artifacts(record.run_id, "model")] == ["model/model.onnx"]


@pytest.mark.integration
def test_a_new_version_moves_the_alias_only_when_approved(
    exported_onnx: Path, tmp_path: Path
) -> None:
    uri = _uri(tmp_path)
    _register(uri, exported_onnx)
    approve(tracking_uri=uri, model_name="detector", version="1", approved_by="qa")
    second = _register(uri, exported_onnx, dataset_version="v2")
    assert second.version == "2"
    assert get_model_record(uri, "detector", "production").version == "1"
    approve(tracking_uri=uri, model_name="detector", version="2", approved_by="qa")
    assert get_model_record(uri, "detector", "@production").dataset_version == "v2"
    with pytest.raises(RegistryError, match="model 'detector' version 7: not found"):
        approve(tracking_uri=uri, model_name="detector", version="7", approved_by="qa")


@pytest.mark.integration
def test_mismatching_sha256_raises_integrity_error(exported_onnx: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = _uri(tmp_path)
    record = _register(uri, exported_onnx)
    # a record that promises other bytes
    wrong = record.model_copy(update={"onnx_sha256": "0" * 64})
    with pytest.raises(IntegrityError, match="does not match the record"):
        download_onnx(uri, wrong, tmp_path / "a")
    assert not (tmp_path / "a" / "model.onnx").exists(), "a bad download is not left behind"
    # an artifact altered in the store after registration
    artifacts = Path(urlparse(MlflowClient(uri).get_run(record.run_id).info.artifact_uri).path)
    with open(artifacts / record.onnx_artifact, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(IntegrityError, match=f"model 'detector' version {record.version}"):
        download_onnx(uri, record, tmp_path / "b")

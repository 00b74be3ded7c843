"""The compiled IR is what a cluster runs (no cluster here): check its wiring and platform spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from pipelines.submit import cluster_settings_json, parse_params
from pipelines.training import SECRET_ENV, compile_pipeline
from qcloop.errors import PipelineError
from qcloop.settings import Settings, StoreSettings


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "training.yaml")
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_secrets_reach_the_steps_that_need_them(ir: tuple[dict, dict]) -> None:
    _, executors = ir
    steps = ("exec-resolve-dataset-version", "exec-load-dataset", "exec-champion", "exec-register")
    for step in steps:
        (secret,) = executors[step]["secretAsEnv"]
        assert {k["envVar"] for k in secret["keyToEnv"]} == set(SECRET_ENV.values())
        assert "secret_name" in json.dumps(secret["secretNameParameter"])
    assert "secretAsEnv" not in executors["exec-train"]  # training needs no credentials


def test_training_placement_is_a_run_parameter(ir: tuple[dict, dict]) -> None:
    spec, executors = ir
    train = executors["exec-train"]
    assert train["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "node_selector"
    assert train["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "tolerations"
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "gpu_limit" in resources["accelerator"]["resourceCount"]
    # the loader processes that feed a GPU pass batches through /dev/shm: memory-backed,
    # not the container's default 64 MiB
    assert train["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "2Gi"}
    ]


def test_caching_and_defaults(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["load-dataset"]["cachingOptions"] == {"enableCache": True}  # keyed on version
    # ... the version "latest" resolved first, uncached, to the newest one when the run starts
    assert tasks["resolve-dataset-version"]["cachingOptions"] == {}
    resolved = {"producerTask": "resolve-dataset-version", "outputParameterKey": "Output"}
    load_inputs = tasks["load-dataset"]["inputs"]["parameters"]
    assert load_inputs["version"]["taskOutputParameter"] == resolved
    assert tasks["champion"]["cachingOptions"] == {}  # the alias moves: never cached
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in (
        "dataset_version",
        "epochs",
        "imgsz",
        "batch",
        "min_map50_95",
        "tolerance",
        "device",
        "gpu_limit",
        "node_selector",
        "tolerations",
        "secret_name",
        "int8",
        "dynamic_onnx",
        "model_size",
        "patience",
        "approval",
        "recipe",
        "average_last",
    ):
        assert "defaultValue" in params[name], name
    assert params["approval"]["defaultValue"] == "manual"  # a person approves unless asked
    assert params["dataset_version"]["defaultValue"] == "latest"  # a run from the UI
    # the recipe and the averaging reach the train step and the lineage of the register step
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = {name: task for dag in dags for name, task in dag["tasks"].items()}
    for task in ("train", "register"):
        inputs = tasks[task]["inputs"]["parameters"]
        for name in ("recipe", "average_last"):
            assert inputs[name]["componentInputParameter"].endswith(name), (task, name)
    # the lineage names the resolved version, never "latest"
    registered = tasks["register"]["inputs"]["parameters"]["dataset_version"]
    assert registered["componentInputParameter"] == (
        "pipelinechannel--resolve-dataset-version-Output"
    )
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/qcloop/qcloop:0.1.0"}  # heavy deps live in the image


def test_params_and_secret_free_settings() -> None:
    assert parse_params(["epochs=3", "device=cuda:0", 'node_selector={"gpu": "h100"}']) == {
        "epochs": 3,
        "device": "cuda:0",
        "node_selector": {"gpu": "h100"},
    }
    with pytest.raises(PipelineError, match="name=value"):
        parse_params(["epochs"])
    settings = Settings(
        store=StoreSettings(
            kind="s3",
            endpoint="http://minio:9000",
            access_key="AK-visible",
            secret_key="SK-visible",
        )
    )
    text = cluster_settings_json(settings)
    assert "minio:9000" in text and "AK-visible" not in text and "*****" not in text


def test_unreachable_cluster_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert (
        main(["pipeline", "submit", "--host", "http://127.0.0.1:9", "--dataset-version", "v1"]) == 1
    )
    err = capsys.readouterr().err
    assert "Kubeflow Pipelines at http://127.0.0.1:9" in err and "port-forward" in err


def test_scheduled_submit_needs_a_dataset_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "empty-store"))
    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:9"]) == 1
    assert "no dataset version in the object store" in capsys.readouterr().err


def test_auto_approval_is_a_branch_inside_the_passed_gate(ir: tuple[dict, dict]) -> None:
    spec, executors = ir
    branches = json.dumps(spec["components"])
    assert "inputs.parameter_values['pipelinechannel--approval'] == 'auto'" in branches
    assert "comp-approve-step" in spec["components"]
    (secret,) = executors["exec-approve-step"]["secretAsEnv"]  # it writes to MLflow
    assert "secret_name" in json.dumps(secret["secretNameParameter"])


def test_bad_model_size_or_approval_is_refused_before_any_step(tmp_path: Path) -> None:
    from components.train import model_config
    from pipelines.submit import submit
    from pipelines.training import check_params

    assert model_config("s") == "yolov8s.yaml"
    with pytest.raises(PipelineError, match="model_size 'm': use one of n, s"):
        check_params({"model_size": "m"})
    with pytest.raises(PipelineError, match="approval 'yes': use auto"):
        check_params({"approval": "yes"})
    with pytest.raises(PipelineError, match="recipe 'fancy': use one of reference, scratch"):
        check_params({"recipe": "fancy"})
    with pytest.raises(PipelineError, match="average_last -1: use 0"):
        check_params({"average_last": -1})
    check_params({"recipe": "scratch", "average_last": 10, "model_size": "s"})
    check_params({"recipe": "reference,scratch"})  # an ensemble of one model per recipe
    check_params({"recipe": "reference,scratch,reference"})  # the second reference: seed + 1
    with pytest.raises(PipelineError, match="an empty member"):
        check_params({"recipe": "scratch,,reference"})
    settings = Settings(home=tmp_path, store=StoreSettings(path=tmp_path / "store"))
    with pytest.raises(PipelineError, match="approval 'sometimes'"):
        submit(
            settings,
            host="http://127.0.0.1:9",
            params={"dataset_version": "v1", "approval": "sometimes"},
        )

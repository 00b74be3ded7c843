"""Fixtures of the Helm chart tests: a real helm binary and render helpers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qcloop"
HERE = Path(__file__).parent
REQUIRED_VALUES = HERE / "values-required.yaml"
EXTERNAL_VALUES = HERE / "values-external.yaml"
FLEETS_VALUES = HERE / "values-fleets.yaml"
HELM_BIN_DIR = ROOT / ".qcloop" / "bin"
KUBE_VERSION = "1.30.0"
RELEASE = "qc"
NAMESPACE = "qcloop"

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm_path() -> Path:
    """The helm binary, installed once by scripts/install-helm.sh (fails, never skips)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-helm.sh"), str(HELM_BIN_DIR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/install-helm.sh failed ({proc.returncode}):\n{proc.stderr}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not path.is_absolute():
        path = ROOT / path
    if not path.is_file():
        pytest.fail(f"scripts/install-helm.sh printed {path}, which is not a file")
    return path


@pytest.fixture(scope="session")
def helm(helm_path: Path) -> Helm:
    """Run `helm ARGS...`; the CompletedProcess comes back whatever the exit code."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    return run


def template(
    helm: Helm,
    *sets: str,
    required: bool = True,
    values: Iterable[Path] = (),
    release: str = RELEASE,
) -> subprocess.CompletedProcess[str]:
    """`helm template` with the required values (unless told not to), values files and `--set`s."""
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    files = [REQUIRED_VALUES] if required else []
    for path in [*files, *values]:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return helm(*args)


def render(
    helm: Helm, *sets: str, values: Iterable[Path] = (), release: str = RELEASE
) -> tuple[str, list[dict[str, Any]]]:
    """Rendered YAML text and its objects; fails the test if helm does."""
    proc = template(helm, *sets, values=values, release=release)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kubernetes_validate(manifest: str) -> subprocess.CompletedProcess[str]:
    """`kubernetes-validate --strict` against the Kubernetes 1.30 schemas (offline)."""
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.fail("kubernetes-validate missing: pip install kubernetes-validate (test extra)")
    return subprocess.run(
        [str(exe), "--strict", "--quiet", "-k", KUBE_VERSION, "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
    )


def docs_values(directory: Path) -> list[Path]:
    """`my-values.yaml` and `secrets.yaml` of docs/deploy.md, made as it says, in ``directory``."""
    import re

    doc = (ROOT / "docs" / "deploy.md").read_text()
    after = doc[doc.index("Write `my-values.yaml`") :]
    block = re.search(r"```yaml\n(.*?)```", after, flags=re.DOTALL)
    assert block, "docs/deploy.md: no yaml block after `Write `my-values.yaml``"
    values = directory / "my-values.yaml"
    values.write_text(block.group(1).replace("<owner>", "example"))
    command = re.search(r"bash scripts/make-secrets-values.sh ([\w .-]+) > secrets.yaml", doc)
    assert command, "docs/deploy.md: no `bash scripts/make-secrets-values.sh ... > secrets.yaml`"
    made = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-secrets-values.sh"), *command.group(1).split()],
        capture_output=True,
        text=True,
        check=True,
    )
    secrets = directory / "secrets.yaml"
    secrets.write_text(made.stdout)
    return [values, secrets]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}

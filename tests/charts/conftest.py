"""Fixtures of the Helm chart tests: a real helm binary and a render helper."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qcloop"
REQUIRED_VALUES = Path(__file__).with_name("values-required.yaml")
HELM_BIN_DIR = ROOT / ".qcloop" / "bin"

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

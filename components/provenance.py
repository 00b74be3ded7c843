"""What a model was made from: the code version (commit) and the library versions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# hex digits of a commit that name the code (and the platform image's tag, images.yml)
CODE_VERSION_LENGTH = 12


def code_version() -> str:
    """``$QCLOOP_CODE_VERSION``, else the git short hash (``-dirty`` if changed), else unknown.

    The image sets the variable to the commit it was built from; its tag is the same text.
    """
    if os.environ.get("QCLOOP_CODE_VERSION"):
        return os.environ["QCLOOP_CODE_VERSION"]
    repo = Path(__file__).resolve().parent
    try:
        head = _git(repo, "rev-parse", f"--short={CODE_VERSION_LENGTH}", "HEAD")
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def environment() -> dict[str, str]:
    """Versions that decide what a training run produces (logged as ``env.*`` params)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"env.python": platform.python_version(), "env.machine": platform.machine()}
    for package in ("torch", "ultralytics", "onnx", "onnxruntime", "numpy"):
        try:
            found[f"env.{package}"] = version(package)
        except PackageNotFoundError:
            found[f"env.{package}"] = "absent"
    return found


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()

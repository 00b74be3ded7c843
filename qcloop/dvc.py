"""Thin wrapper over the DVC command line for dataset versions.

DVC runs as ``python -m dvc`` of this interpreter. The remote comes from
settings and is written to ``.dvc/config.local`` (never committed); S3
credentials are passed as environment variables, never written to disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from qcloop.errors import DatasetError
from qcloop.settings import Settings

REMOTE_NAME = "qcloop"


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    store = settings.store
    if settings.dvc.remote.startswith("s3://") and store.access_key and store.secret_key:
        env["AWS_ACCESS_KEY_ID"] = store.access_key.get_secret_value()
        env["AWS_SECRET_ACCESS_KEY"] = store.secret_key.get_secret_value()
    return env


def run_dvc(workspace: Path, settings: Settings, *args: str) -> str:
    """Run ``dvc ARGS`` in ``workspace``; ``DatasetError`` with DVC's own message on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        env=_env(settings),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise DatasetError(f"dvc {' '.join(args)} failed in {workspace}:\n  " + "\n  ".join(tail))
    return proc.stdout


def remote_url(settings: Settings) -> str:
    """The remote as DVC wants it: an absolute folder, or s3://."""
    remote = settings.dvc.remote
    return remote if "://" in remote else str(Path(remote).resolve())


def ensure_repo(workspace: Path, settings: Settings) -> None:
    """Make ``workspace`` a DVC repo with the configured remote (idempotent)."""
    workspace.mkdir(parents=True, exist_ok=True)
    if not (workspace / ".dvc").is_dir():
        scm = [] if (workspace / ".git").exists() else ["--no-scm"]
        run_dvc(workspace, settings, "init", "--quiet", *scm)
        run_dvc(workspace, settings, "config", "core.analytics", "false")
        run_dvc(workspace, settings, "config", "core.check_update", "false")
    url = remote_url(settings)
    run_dvc(
        workspace, settings, "remote", "add", "--local", "--force", "--default", REMOTE_NAME, url
    )
    if settings.dvc.endpoint_url:
        run_dvc(
            workspace,
            settings,
            "remote",
            "modify",
            "--local",
            REMOTE_NAME,
            "endpointurl",
            settings.dvc.endpoint_url,
        )


def add_and_push(workspace: Path, settings: Settings, target: str = "data") -> str:
    """``dvc add`` + ``dvc push`` of ``target``; return the text of ``<target>.dvc``."""
    run_dvc(workspace, settings, "add", "--quiet", target)
    run_dvc(workspace, settings, "push", "--quiet", "-r", REMOTE_NAME, f"{target}.dvc")
    return (workspace / f"{target}.dvc").read_text()


def pull_pointer(pointer: str, dest: Path, settings: Settings) -> Path:
    """Materialise the directory a ``.dvc`` pointer names into ``dest`` (a new folder)."""
    repo = dest.parent / f".{dest.name}.dvcrepo"
    repo.mkdir(parents=True)
    try:
        ensure_repo(repo, settings)
        (repo / "data.dvc").write_text(pointer)
        run_dvc(repo, settings, "pull", "--quiet", "-r", REMOTE_NAME, "data.dvc")
        (repo / "data").rename(dest)
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    return dest

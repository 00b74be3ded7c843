"""Start a local Label Studio headless (tests, benchmarks, the embedded default).

A self-contained server: its own data dir and sqlite DB, an admin whose legacy
API token is set before the first start, no calls to outside services, bound to
loopback, a port other than 8080. First start on a new DB takes ~50 s on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from qcloop_labelling.errors import LabelStudioUnavailable

INSTALL_HINT = "run scripts/install-label-studio.sh (~4 min, ~1 GB) or set QCLOOP_LABEL_STUDIO_BIN"


@dataclass(frozen=True)
class LocalServer:
    """A running local Label Studio."""

    url: str
    token: str
    data_dir: Path
    pid: int


def find_binary(repo_root: Path) -> Path:
    """``$QCLOOP_LABEL_STUDIO_BIN`` or ``<repo>/.qcloop/ls-venv/bin/label-studio``."""
    default = repo_root / ".qcloop" / "ls-venv" / "bin" / "label-studio"
    path = Path(os.environ.get("QCLOOP_LABEL_STUDIO_BIN") or default)
    if not os.access(path, os.X_OK):
        raise LabelStudioUnavailable(f"Label Studio is not installed at {path}: {INSTALL_HINT}")
    return path


def server_env(data_dir: Path, token: str, username: str) -> dict[str, str]:
    """Environment of a headless, offline, loopback-only Label Studio."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=secrets.token_urlsafe(16),
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # only works if set before the first start
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LATEST_VERSION_CHECK="false",  # otherwise it asks the package index at start
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",  # otherwise errors are reported to an outside service
        FRONTEND_SENTRY_DSN="",
        USE_DEFAULT_BANNED_SUBNETS="false",  # lets it reach a MinIO/S3 endpoint on loopback
    )
    return env


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise LabelStudioUnavailable(
                f"label-studio exited with {proc.returncode} before it was up:\n{tail}"
            )
        try:
            if requests.get(f"{url}/health", timeout=2).json().get("status") == "UP":
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-3000:]
    raise LabelStudioUnavailable(f"label-studio not UP at {url} after {timeout_s:.0f} s:\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def local_server(
    binary: Path,
    data_dir: Path,
    port: int,
    *,
    username: str = "sync@qcloop.local",
    timeout_s: float = 240.0,
) -> Iterator[LocalServer]:
    """Run Label Studio on ``127.0.0.1:port`` until the block ends; yields url + token."""
    if port == 8080:
        raise ValueError("port 8080 is where kubectl/helm look for a cluster; pick another")
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(20)  # 40 characters, like Label Studio's own
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "server.log"
    command = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=data_dir,
            env=server_env(data_dir, token, username),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, proc, log, timeout_s)
        yield LocalServer(url, token, data_dir, proc.pid)
    finally:
        stop(proc)

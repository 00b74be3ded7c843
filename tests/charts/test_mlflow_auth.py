"""MLflow with authentication as the chart runs it: a real server, real users, the bridge.

The chart's MLflow Deployment (``mlflow.auth.enabled=true``) and its users Job, rendered,
run here as processes with what their pods would get (the init container's settings
file, the Secrets' values; artifacts in a folder instead of MinIO). Then: nobody gets in
without a password; the platform's user (the pipeline steps, the bridge) registers a
version and, with the same EDIT permission, can move the production alias itself, which
is why a bridge with ``release.approvers`` releases only what an approver's key signed;
an approver given EDIT on the model approves with their key, and it is released.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.charts.conftest import NAMESPACE, RELEASE, Helm, by_kind, render
from tests.charts.test_chart import MLFLOW_AUTH, env_of
from tests.cluster import emulator
from tests.services import free_port

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
ADMIN = ("admin", "test-only-mlflow-admin")
PLATFORM = ("qcloop", "test-only-mlflow-qcloop")


def _resolved_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's env with ``secretKeyRef`` values read from the rendered Secrets."""
    env = {}
    for name, value in env_of(container).items():
        if isinstance(value, dict):
            ref = value["secretKeyRef"]
            secret = emulator.find(objects, "Secret", NAMESPACE, ref["name"])
            value = emulator.secret_data(secret)[ref["key"]]
        env[name] = str(value)
    return env


def _wait_healthy(url: str, server: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0][-3000:]
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"MLflow at {url} not healthy after {timeout} s")


@pytest.fixture(scope="module")
def chart_mlflow(
    helm: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The chart's MLflow with auth, started as its pod would run it; (URL, rendered objects)."""
    if shutil.which("sh") is None:
        pytest.fail("sh is needed to run the init container's command")
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    _, objects = render(helm, *MLFLOW_AUTH)
    spec = by_kind(objects, "Deployment")[f"{RELEASE}-qcloop-mlflow"]["spec"]["template"]["spec"]
    (tmp / "mlflow").mkdir()
    (tmp / "auth").mkdir()
    # the init container writes the settings file, as in the pod (paths onto this machine's)
    (init,) = spec["initContainers"]
    command = [
        a.replace("/auth/", f"{tmp}/auth/").replace("/mlflow/", f"{tmp}/mlflow/")
        for a in init["command"]
    ]
    subprocess.run(["sh", *command[1:]], check=True)
    # the server with the container's own command and environment
    container = spec["containers"][0]
    port = free_port()
    args = []
    for arg in container["command"][1:]:
        arg = arg.replace("/mlflow/", f"{tmp}/mlflow/").replace("/auth/", f"{tmp}/auth/")
        if arg.startswith("--artifacts-destination="):
            arg = f"--artifacts-destination={tmp / 'artifacts'}"
        arg = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}.get(arg, arg)
        args.append(arg)
    env = {
        **_resolved_env(objects, container),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env["MLFLOW_AUTH_CONFIG_PATH"] = f"{tmp}/auth/basic_auth.ini"
    env["HOME"] = str(tmp)
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), *args],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server)
        yield url, objects
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _users_job(url: str, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    spec = by_kind(objects, "Job")[f"{RELEASE}-qcloop-mlflow-users"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {**_resolved_env(objects, container), "MLFLOW_URL": url}
    env["PATH"] = os.environ["PATH"]
    command = [sys.executable, *container["command"][1:]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_chart_runs_mlflow_with_auth_and_the_bridge_needs_an_approvers_key(
    chart_mlflow: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    mqtt_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from components.audit import ApprovalRefused, approve
    from components.registry import get_model_record, register_model
    from components.release import build_release, publish_release
    from qcloop.contracts import EvalMetrics
    from qcloop.errors import RegistryError
    from qcloop.settings import (
        MlflowSettings,
        MqttSettings,
        ReleaseSettings,
        Settings,
        StoreSettings,
    )
    from qcloop.signing import generate_keypair, load_private_key

    url, objects = chart_mlflow
    # Given the chart's MLflow with auth: nobody gets in without a password
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(RegistryError, match="MLFLOW_TRACKING_USERNAME"):
        get_model_record(url, "det", "1")
    # When the users Job runs (after install, and again after an upgrade)
    first, again = _users_job(url, objects), _users_job(url, objects)
    assert first.returncode == 0 and "created MLflow user qcloop" in first.stdout, first.stderr
    assert again.returncode == 0 and "password set" in again.stdout, again.stderr
    # Then the platform's user (the pipeline steps) registers a version ...
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PLATFORM[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PLATFORM[1])
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"an ONNX as far as the registry and the bridge care" * 100)
    record = register_model(
        tracking_uri=url,
        experiment="auth",
        model_name="det",
        onnx_path=onnx,
        metrics=EvalMetrics(map50=0.5, map50_95=0.3, precision=0.5, recall=0.5, images=4),
        params={},
        dataset_version="v1",
        code_version="test",
        class_names=["scratch"],
        input_size=160,
    )
    # ... and, with the same permission, could move the production alias itself
    approve(tracking_uri=url, model_name="det", version=record.version, approved_by="qcloop")
    # so a bridge with an approver list refuses what no approver's key signed
    alice_key, alice_pub = generate_keypair(tmp_path / "keys", "alice")
    settings = Settings(
        home=tmp_path,
        store=StoreSettings(path=tmp_path / "store"),
        mlflow=MlflowSettings(tracking_uri=url, model_name="det"),
        mqtt=MqttSettings(url=mqtt_url, fleet="auth-line"),
        release=ReleaseSettings(approvers=[alice_pub]),
    )
    with pytest.raises(ApprovalRefused, match="carries no signed approval"):
        build_release(settings, released_by="bridge")

    # When the admin makes alice an MLflow user with EDIT on the model (docs/deploy.md)
    from mlflow.server import get_app_client

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    users = get_app_client("basic-auth", tracking_uri=url)
    alice = ("alice", "test-only-alice-password")
    users.create_user(*alice)
    users.grant_user_permission(alice[0], "registered_model", "det", "EDIT")
    # and a user with the default READ can read, not approve
    users.create_user("viewer", "x" * 12)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "viewer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "x" * 12)
    assert get_model_record(url, "det", "@production").version == record.version  # reads
    with pytest.raises(RegistryError, match="permission"):
        approve(tracking_uri=url, model_name="det", version=record.version, approved_by="viewer")
    # Then alice approves with her key, and the bridge (the platform's user) releases it
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", alice[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", alice[1])
    approve(
        tracking_uri=url,
        model_name="det",
        version=record.version,
        approved_by="alice",
        signing_key=load_private_key(alice_key),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PLATFORM[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PLATFORM[1])
    release = build_release(settings, released_by="bridge")
    publish_release(settings, release)
    assert release.message.model.version == record.version
    assert release.message.sha256 == record.onnx_sha256

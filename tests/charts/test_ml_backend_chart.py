"""The chart's ML backend: a hardened Deployment only Label Studio reaches, with basic auth.

Rendered with the real helm and validated against the Kubernetes 1.30 schemas; then the
backend's container is started the way its pod would run it: its command, the env the
chart gives it (Secrets resolved from the rendered ones), a real S3 endpoint for the
chart's MinIO, and nothing of this machine's settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.charts.conftest import (
    NAMESPACE,
    RELEASE,
    Helm,
    kubernetes_validate,
    render,
    template,
)
from tests.cluster import emulator
from tests.services import free_port

pytestmark = pytest.mark.integration

NAME = f"{RELEASE}-qcloop-ml-backend"
ON = ("labelStudio.mlBackend.enabled=true", "labelStudio.mlBackend.auth.password=test-only-ml")
VENV_BIN = Path(sys.executable).parent


def objects_named(objects: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The objects called ``name``, by kind."""
    return {o["kind"]: o for o in objects if o["metadata"]["name"] == name}


def test_off_by_default_and_on_only_with_a_password_and_label_studio(helm: Helm) -> None:
    # Given the required values alone; Then no ML backend is rendered
    _, objects = render(helm)
    assert objects_named(objects, NAME) == {}
    # When it is switched on without a password, without Label Studio, or with Label
    # Studio's default SSRF guard (which refuses a backend on a cluster address)
    for sets, message in (
        (ON[:1], "labelStudio.mlBackend.auth.password is required"),
        (
            (*ON, "labelStudio.enabled=false", "schedules.labelling.enabled=false"),
            "labelStudio.mlBackend.enabled needs labelStudio.enabled",
        ),
        (
            (*ON, "labelStudio.ssrf.useDefaultBannedSubnets=true"),
            "needs labelStudio.ssrf.useDefaultBannedSubnets=false",
        ),
    ):
        proc = template(helm, *sets)
        # Then the render fails, naming the value
        assert proc.returncode != 0 and message in proc.stderr, (sets, proc.stderr)


def test_renders_a_hardened_backend_of_the_platform_image(helm: Helm) -> None:
    # Given the backend on, verifying releases with the release keys, egress restricted
    keys = "releaseBridge.publicKeys.configMap=release-keys"
    manifest, objects = render(helm, *ON, keys, "networkPolicy.restrictEgress=true")
    # Then Kubernetes 1.30 accepts every object
    proc = kubernetes_validate(manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mine = objects_named(objects, NAME)
    assert set(mine) == {
        "Secret",
        "ServiceAccount",
        "Service",
        "Deployment",
        "NetworkPolicy",
    }
    pod = mine["Deployment"]["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    # and it runs the qcloop command in the platform image, hardened like every workload
    labelling = pod_of(objects, f"{RELEASE}-qcloop-labelling")["containers"][0]
    assert box["image"] == labelling["image"]
    assert box["command"] == ["qcloop", "labelling", "ml-backend", "--host=0.0.0.0", "--register"]
    assert pod["automountServiceAccountToken"] is False
    assert mine["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == NAME and pod["enableServiceLinks"] is False
    ctx = box["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["runAsNonRoot"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert all(box[p]["httpGet"]["path"] == "/health" for p in ("startupProbe", "readinessProbe"))
    assert box["resources"]["requests"] and box["resources"]["limits"]["memory"]
    # and it reads the store as the labelling user, trusts the release keys, knows its URL
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in box["env"]}
    assert env["QCLOOP_STORE__ACCESS_KEY"]["secretKeyRef"]["key"] == "labelling-access-key"
    assert env["QCLOOP_RELEASE__PUBLIC_KEYS"] == "/etc/qcloop/release-keys"
    assert {"name": "release-keys", "configMap": {"name": "release-keys"}} in pod["volumes"]
    assert env["QCLOOP_LABEL_STUDIO__ML_BACKEND__URL"] == f"http://{NAME}.{NAMESPACE}.svc:9090"
    assert env["QCLOOP_LABEL_STUDIO__ML_BACKEND__PASSWORD"]["secretKeyRef"] == {
        "name": NAME,
        "key": "password",
    }
    assert env["QCLOOP_LABEL_STUDIO__TOKEN"]["secretKeyRef"]["key"] == "token"  # --register
    # and only Label Studio's pods reach it, on its port
    policy = mine["NetworkPolicy"]["spec"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "qcloop",
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "label-studio",
                }
            }
        }
    ]
    assert rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert mine["Service"]["spec"]["ports"][0]["port"] == 9090


def pod_of(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The pod spec of a Deployment or CronJob."""
    kinds = ("Deployment", "CronJob")
    obj = next(o for o in objects if o["metadata"]["name"] == name and o["kind"] in kinds)
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(obj["spec"]["template"]["spec"])


def test_an_existing_secret_replaces_the_generated_one_and_register_can_be_off(
    helm: Helm,
) -> None:
    _, objects = render(
        helm,
        ON[0],
        "labelStudio.mlBackend.auth.existingSecret=ml-auth",
        "labelStudio.mlBackend.register=false",
    )
    mine = objects_named(objects, NAME)
    assert "Secret" not in mine
    (box,) = pod_of(objects, NAME)["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in box["env"]}
    assert env["QCLOOP_LABEL_STUDIO__ML_BACKEND__PASSWORD"]["secretKeyRef"]["name"] == "ml-auth"
    assert "--register" not in box["command"] and "QCLOOP_LABEL_STUDIO__TOKEN" not in env


def test_the_pod_serves_with_the_charts_env_and_wants_its_secrets_password(
    helm: Helm, s3_endpoint: str, tmp_path: Path
) -> None:
    # Given the backend's container as the chart renders it, its Secrets resolved
    _, objects = render(helm, *ON)
    (box,) = pod_of(objects, NAME)["containers"]
    env = emulator.container_env(objects, NAMESPACE, box)
    password = env["QCLOOP_LABEL_STUDIO__ML_BACKEND__PASSWORD"]
    assert password == "test-only-ml"
    # ... the cluster's Services on this machine: MinIO as a real S3 endpoint, Label Studio
    # not up yet; the pod's /tmp a folder of its own; the image's ENV and nothing else
    port = free_port()
    minio = f"http://{RELEASE}-qcloop-minio.{NAMESPACE}.svc:9000"
    env = {k: v.replace(minio, s3_endpoint) for k, v in env.items()}
    env["QCLOOP_LABEL_STUDIO__URL"] = f"http://127.0.0.1:{free_port()}"
    env["QCLOOP_LABEL_STUDIO__ML_BACKEND__PORT"] = str(port)
    env = {k: v.replace("/tmp", str(tmp_path)) for k, v in env.items()}
    image = emulator.image_env()
    pod_env = {
        **{k: v for k, v in image.items() if k.startswith(("PYTHON", "YOLO_AUTO", "MLFLOW"))},
        **env,
        "PATH": f"{VENV_BIN}:{os.defpath}",
    }
    command = [str(VENV_BIN / box["command"][0]), *box["command"][1:]]
    log = tmp_path / "pod.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=pod_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=out
        )
    try:
        # When Label Studio (and a probe) call it
        url = f"http://127.0.0.1:{port}"
        health = wait_health(url, proc, log)
        refused = requests.post(f"{url}/setup", json={}, timeout=5)
        setup = requests.post(f"{url}/setup", json={}, auth=("label-studio", password), timeout=5)
        # (its first try to connect itself to Label Studio runs beside the server)
        deadline = time.monotonic() + 60
        while "not connected to Label Studio yet" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    # Then it is UP, says nothing is released, and wants the Secret's password
    assert health["status"] == "UP" and health["released"] is False
    assert refused.status_code == 401
    assert setup.status_code == 200 and setup.json()["model_version"] == ""
    # and it tried to connect itself to Label Studio, and stopped cleanly on SIGTERM
    assert "not connected to Label Studio yet" in log.read_text()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert json.loads(stdout.decode().strip().splitlines()[-1])["stopped"] is True


def wait_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """/health once the process answers; fails with its log if it exits or never does."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the backend exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return dict(requests.get(f"{url}/health", timeout=2).json())
        except requests.RequestException:
            time.sleep(0.3)
    pytest.fail(f"the backend did not answer /health in 60 s:\n{log.read_text()[-3000:]}")


def test_a_long_release_name_still_names_it_within_63_characters(helm: Helm) -> None:
    _, objects = render(helm, *ON, release="r" * 53)
    names = {o["metadata"]["name"] for o in objects if o["metadata"]["name"].endswith("backend")}
    assert names and all(len(n) <= 63 for n in names), names
    url = next(
        e["value"]
        for e in pod_of(objects, names.pop())["containers"][0]["env"]
        if e["name"] == "QCLOOP_LABEL_STUDIO__ML_BACKEND__URL"
    )
    assert url.startswith("http://r") and url.endswith("-ml-backend.qcloop.svc:9090")

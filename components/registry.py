"""The model registry (MLflow): register, look up and download model versions.

Approval and its audit trail are in ``components.audit``; code and library versions in
``components.provenance``.

A registered version carries the ``ModelRecord`` fields as tags; its metrics
live in the MLflow run that logged the ONNX. Approval is tags plus an alias
(stages are deprecated). Every MLflow failure becomes a ``RegistryError``
naming the model and reference and saying what to do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.provenance import environment
from qcloop.contracts import EvalMetrics, ModelRecord, OnnxVariant, utcnow
from qcloop.errors import IntegrityError, NotRegisteredError, RegistryError
from qcloop.storage import sha256_file

log = logging.getLogger(__name__)

ONNX_ARTIFACT = "model/model.onnx"
INT8_ARTIFACT = "model/model-int8.onnx"
AUDIT_PREFIX = "qcloop.audit."
RECORD_TAGS = ("onnx_sha256", "onnx_size", "input_size", "class_names")
RECORD_TAGS += ("dataset_version", "code_version")
# what a training run was made of (dataset version, code, parameters), hashed: see
# components.attempts
TRAINING_KEY_TAG = "qcloop.training_key"


def _client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``tracking_uri``."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's default (7 retries, backoff 2) waits ~4 minutes before saying a server is down
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def _mlflow_errors(tracking_uri: str, what: str, todo: str) -> Iterator[None]:
    """Turn MLflow and connection failures into ``RegistryError`` naming ``what``."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    unreachable = (
        f"{what}: MLflow at {tracking_uri} is unreachable; "
        "start the MLflow server or fix mlflow.tracking_uri"
    )
    try:
        yield
    except MlflowException as exc:
        text = str(exc)
        if "Max retries exceeded" in text or "Failed to establish" in text:
            raise RegistryError(unreachable) from None
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
            raise NotRegisteredError(
                f"{what}: not found in MLflow at {tracking_uri}; {todo}"
            ) from None
        if "error code 401" in text or exc.error_code == "UNAUTHENTICATED":
            raise RegistryError(
                f"{what}: MLflow at {tracking_uri} wants a login: set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD (on a cluster, the chart's Secret does)"
            ) from None
        if "error code 403" in text or exc.error_code == "PERMISSION_DENIED":
            user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this user"
            raise RegistryError(
                f"{what}: MLflow at {tracking_uri} gives {user} no permission for this; "
                "its admin grants it (docs/deploy.md, who may approve)"
            ) from None
        raise RegistryError(f"{what}: MLflow at {tracking_uri} refused: {_short(exc)}") from None
    except (RequestException, ConnectionError):
        raise RegistryError(unreachable) from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _experiment_id(client: Any, tracking_uri: str, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside the db, not in the cwd
        db = Path(tracking_uri[len("sqlite:///") :]).resolve()
        location = (db.parent / "mlartifacts" / experiment).as_uri()
    return str(client.create_experiment(experiment, artifact_location=location))


def register_model(
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    onnx_path: Path,
    metrics: EvalMetrics,
    params: dict[str, Any],
    dataset_version: str,
    code_version: str,
    class_names: list[str],
    input_size: int,
    extra_artifacts: tuple[Path, ...] = (),
    pipeline_run: str = "",
    training_key: str = "",
    parent_dataset_version: str = "",
) -> ModelRecord:
    """Log a run (params, metrics, ONNX at ``model/model.onnx``, ``extra_artifacts`` such as
    the evaluation report at the run's root) and register it as a version.

    ``training_key`` (``components.attempts.training_key``) marks the run, so that the
    same data, code and parameters are not trained again. The run carries its dataset
    version and that version's parent as tags, so the runs of a loop link up in MLflow
    (search ``tags.dataset_version = 'v2'``, follow ``parent_dataset_version``)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RegistryError(f"{onnx_path}: no such ONNX file to register; export the model first")
    tags = {
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_size": str(onnx_path.stat().st_size),
        "input_size": str(input_size),
        "class_names": json.dumps(class_names),
        "dataset_version": dataset_version,
        "parent_dataset_version": parent_dataset_version or "none",
        "code_version": code_version,
        "pipeline_run": pipeline_run or "unknown",
    }
    if training_key:
        tags[TRAINING_KEY_TAG] = training_key
    params = {**params, **environment()}
    client = _client(tracking_uri)
    what = f"model '{model_name}' (experiment '{experiment}')"
    with _mlflow_errors(tracking_uri, what, "check the tracking URI"):
        run_id = _log_run(client, tracking_uri, experiment, onnx_path, metrics, params, tags)
        for extra in extra_artifacts:
            client.log_artifact(run_id, str(extra))
        _ensure_registered_model(client, model_name)
        artifact_uri = client.get_run(run_id).info.artifact_uri
        version = client.create_model_version(
            name=model_name,
            source=f"{artifact_uri}/model",
            run_id=run_id,
            tags={**tags, "onnx_artifact": ONNX_ARTIFACT, "approved": "false"},
            description=f"dataset {dataset_version}, code {code_version}",
        )
    log.info("%s version %s (run %s)", model_name, version.version, run_id)
    return get_model_record(tracking_uri, model_name, str(version.version))


def _log_run(
    client: Any,
    tracking_uri: str,
    experiment: str,
    onnx_path: Path,
    metrics: EvalMetrics,
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    from mlflow.entities import Metric, Param

    run_tags = ("dataset_version", "parent_dataset_version", "code_version", TRAINING_KEY_TAG)
    run = client.create_run(
        _experiment_id(client, tracking_uri, experiment),
        tags={k: tags[k] for k in run_tags if k in tags},
    )
    run_id = str(run.info.run_id)
    now = int(utcnow().timestamp() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, 0) for k, v in metrics.model_dump(exclude_none=True).items()
        ],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    with tempfile.TemporaryDirectory(prefix="qcloop-register-") as tmp:
        staged = Path(tmp) / Path(ONNX_ARTIFACT).name
        shutil.copyfile(onnx_path, staged)
        client.log_artifact(run_id, str(staged), str(Path(ONNX_ARTIFACT).parent))
    client.set_terminated(run_id)
    return run_id


def _ensure_registered_model(client: Any, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model_name)


def get_model_record(tracking_uri: str, model_name: str, ref: str) -> ModelRecord:
    """The record of a version (``ref="3"``) or an alias (``"production"`` or ``"@production"``)."""
    ref = str(ref).strip()
    if not ref.lstrip("@"):
        raise RegistryError(f"model '{model_name}': empty reference; give a version or an @alias")
    client = _client(tracking_uri)
    alias = ref.lstrip("@")
    if ref.isdigit():
        what = f"model '{model_name}' version {ref}"
        todo = f"see the versions of '{model_name}' in the MLflow UI, or register one first"
    else:
        what = f"model '{model_name}' alias @{alias}"
        todo = f"no version carries @{alias}: approve one first (`qcloop model approve VERSION`)"
    try:
        with _mlflow_errors(tracking_uri, what, todo):
            if ref.isdigit():
                version = client.get_model_version(model_name, ref)
            else:
                version = client.get_model_version_by_alias(model_name, alias)
            run = client.get_run(version.run_id) if version.run_id else None
    except NotRegisteredError:
        if not _model_exists(client, model_name):
            raise NotRegisteredError(
                f"model '{model_name}': no such registered model in MLflow at {tracking_uri}; "
                "check the name (mlflow.model_name in `qcloop config`) or register one first "
                "(`qcloop train`)"
            ) from None
        raise
    return _record(model_name, version, run, what)


def _model_exists(client: Any, model_name: str) -> bool:
    """Whether ``model_name`` is registered (True when MLflow cannot say: keep the first error)."""
    try:
        found = client.search_registered_models(filter_string=f"name = '{model_name}'")
    except Exception:
        return True
    return any(model.name == model_name for model in found)


def _record(model_name: str, version: Any, run: Any, what: str) -> ModelRecord:
    tags = dict(version.tags or {})
    missing = [t for t in RECORD_TAGS if t not in tags]
    if run is None or missing:
        raise RegistryError(
            f"{what}: lacks qcloop record tags {missing or ['run']}; "
            "register versions through qcloop (components.registry.register_model)"
        )
    return ModelRecord(
        name=model_name,
        version=str(version.version),
        run_id=str(version.run_id),
        onnx_artifact=tags.get("onnx_artifact", ONNX_ARTIFACT),
        onnx_sha256=tags["onnx_sha256"],
        onnx_size=int(tags["onnx_size"]),
        input_size=int(tags["input_size"]),
        class_names=json.loads(tags["class_names"]),
        metrics=_eval_metrics(run.data.metrics),
        dataset_version=tags["dataset_version"],
        code_version=tags["code_version"],
        approved=tags.get("approved") == "true",
        approved_by=tags.get("approved_by") or None,
        approved_at=tags.get("approved_at") or None,
        int8=_int8_variant(tags, run.data.metrics),
    )


def _int8_variant(tags: dict[str, str], run_metrics: dict[str, float]) -> OnnxVariant | None:
    if "int8_sha256" not in tags:
        return None
    metrics = {k[len("int8_") :]: v for k, v in run_metrics.items() if k.startswith("int8_")}
    return OnnxVariant(
        artifact=tags["int8_artifact"],
        sha256=tags["int8_sha256"],
        size=int(tags["int8_size"]),
        metrics=_eval_metrics(metrics),
    )


def _eval_metrics(run_metrics: dict[str, float]) -> EvalMetrics:
    """``EvalMetrics`` from MLflow run metrics (all floats there; counts back to ints)."""
    metrics: dict[str, float | int] = {
        k: v for k, v in run_metrics.items() if k in EvalMetrics.model_fields
    }
    metrics["images"] = int(metrics.get("images", 0))
    if "captures" in metrics:
        metrics["captures"] = int(metrics["captures"])
    return EvalMetrics.model_validate(metrics)


def variant_of(record: ModelRecord, variant: str) -> tuple[str, str, int]:
    """Artifact path, sha256 and size of one variant of ``record``."""
    if variant == "fp32":
        return record.onnx_artifact, record.onnx_sha256, record.onnx_size
    if variant == "int8" and record.int8 is not None:
        return record.int8.artifact, record.int8.sha256, record.int8.size
    raise RegistryError(
        f"model '{record.name}' version {record.version} has no {variant} variant; "
        f"quantise it first (`qcloop model quantize {record.version}`)"
    )


def attach_int8(
    tracking_uri: str, model_name: str, version: str, int8_path: Path, metrics: EvalMetrics
) -> ModelRecord:
    """Register the INT8 variant on an existing version: artifact, sha256/size tags, metrics."""
    from mlflow.entities import Metric

    record = get_model_record(tracking_uri, model_name, version)
    client = _client(tracking_uri)
    what = f"model '{model_name}' version {version} INT8 variant"
    with (
        _mlflow_errors(tracking_uri, what, "check the version"),
        tempfile.TemporaryDirectory() as tmp,
    ):
        staged = Path(tmp) / Path(INT8_ARTIFACT).name
        shutil.copyfile(int8_path, staged)
        client.log_artifact(record.run_id, str(staged), str(Path(INT8_ARTIFACT).parent))
        now = int(utcnow().timestamp() * 1000)
        values = metrics.model_dump(exclude_none=True).items()
        client.log_batch(
            record.run_id, metrics=[Metric(f"int8_{k}", float(v), now, 0) for k, v in values]
        )
        for key, value in (
            ("int8_artifact", INT8_ARTIFACT),
            ("int8_sha256", sha256_file(int8_path)),
            ("int8_size", str(Path(int8_path).stat().st_size)),
        ):
            client.set_model_version_tag(model_name, str(version), key, value)
    log.info("%s version %s: INT8 variant attached", model_name, version)
    return get_model_record(tracking_uri, model_name, str(version))


def download_onnx(
    tracking_uri: str, record: ModelRecord, dest_dir: Path, variant: str = "fp32"
) -> Path:
    """Download the ONNX (``variant`` fp32 or int8) of ``record`` into ``dest_dir``;
    ``IntegrityError`` if its sha256 or size differ from the record."""
    _client(tracking_uri)  # telemetry off, sqlite folder present
    import mlflow.artifacts

    artifact, sha256, size_expected = variant_of(record, variant)
    what = f"model '{record.name}' version {record.version} artifact {artifact}"
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with _mlflow_errors(tracking_uri, what, "the run's artifacts are gone; register it again"):
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=record.run_id,
                artifact_path=artifact,
                dst_path=str(dest_dir),
                tracking_uri=tracking_uri,
            )
        )
    digest, size = sha256_file(local), local.stat().st_size
    if digest != sha256 or size != size_expected:
        local.unlink()
        raise IntegrityError(
            f"{what}: downloaded sha256 {digest} ({size} bytes) does not match the record's "
            f"{sha256} ({size_expected} bytes); the artifact was altered, "
            "do not deploy it; register the model again"
        )
    return local

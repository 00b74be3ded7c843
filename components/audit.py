"""Approval and its audit trail: who moved which alias to which version, when and why;
and where a registered version came from (lineage)."""

from __future__ import annotations

import json
import logging
from typing import Any

from components.registry import AUDIT_PREFIX, _client, _mlflow_errors, get_model_record
from qcloop.contracts import ModelRecord, utcnow
from qcloop.errors import RegistryError

log = logging.getLogger(__name__)


def approve(
    *,
    tracking_uri: str,
    model_name: str,
    version: str,
    alias: str = "production",
    approved_by: str,
    reason: str = "",
) -> ModelRecord:
    """Tag ``version`` approved (by whom, when, UTC), point ``alias`` at it, audit the move.

    MLflow keeps no history of aliases, so every move is appended to the
    registered model's tags (``qcloop.audit.NNNNNN``: alias, from, to, by, at, why);
    ``alias_history`` reads them back.
    """
    if not approved_by.strip():
        raise RegistryError(f"model '{model_name}' version {version}: approved_by is empty")
    get_model_record(tracking_uri, model_name, str(version))  # exists and is a qcloop record
    client = _client(tracking_uri)
    what = f"model '{model_name}' version {version}"
    alias = alias.lstrip("@")
    now = utcnow().isoformat()
    with _mlflow_errors(tracking_uri, what, "check the version number"):
        previous = _alias_target(client, model_name, alias)
        for key, value in (
            ("approved", "true"),
            ("approved_by", approved_by),
            ("approved_at", now),
        ):
            client.set_model_version_tag(model_name, str(version), key, value)
        client.set_registered_model_alias(model_name, alias, str(version))
        entry = {"alias": alias, "from": previous, "to": str(version), "by": approved_by}
        entry |= {"at": now, "why": reason}
        seq = len(alias_history(tracking_uri, model_name)) + 1
        client.set_registered_model_tag(model_name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(entry))
    log.info("approved %s version %s -> @%s by %s", model_name, version, alias, approved_by)
    return get_model_record(tracking_uri, model_name, str(version))


def _alias_target(client: Any, model_name: str, alias: str) -> str | None:
    """The version an alias points at now, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def alias_history(tracking_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of ``model_name``, oldest first."""
    client = _client(tracking_uri)
    with _mlflow_errors(tracking_uri, f"model '{model_name}'", "register a version first"):
        tags = client.get_registered_model(model_name).tags or {}
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(AUDIT_PREFIX)]


def lineage(tracking_uri: str, model_name: str, ref: str) -> dict[str, Any]:
    """Where a version came from: dataset and code version, pipeline run, params, environment."""
    record = get_model_record(tracking_uri, model_name, ref)
    client = _client(tracking_uri)
    with _mlflow_errors(tracking_uri, f"model '{model_name}' version {record.version}", ""):
        version = client.get_model_version(model_name, record.version)
        params = dict(client.get_run(record.run_id).data.params)
    return {
        "model": record.name,
        "version": record.version,
        "run_id": record.run_id,
        "pipeline_run": (version.tags or {}).get("pipeline_run", "unknown"),
        "dataset_version": record.dataset_version,
        "code_version": record.code_version,
        "params": {k: v for k, v in params.items() if not k.startswith("env.")},
        "environment": {k[4:]: v for k, v in params.items() if k.startswith("env.")},
    }

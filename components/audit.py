"""Approval and its audit trail: who moved which alias to which version, when and why;
whether the release bridge may ship an approved version (``check_release_approval``);
and where a registered version came from (lineage)."""

from __future__ import annotations

import json
import logging
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.registry import AUDIT_PREFIX, _client, _mlflow_errors, get_model_record, variant_of
from qcloop.approvals import (
    APPROVAL_TAG,
    ApprovalStatement,
    VerifiedApproval,
    load_approvers,
    sign_approval,
    verify_approval,
)
from qcloop.contracts import ModelRecord, utcnow
from qcloop.errors import ContractError, IntegrityError, RegistryError
from qcloop.settings import Settings
from qcloop.signing import key_id

log = logging.getLogger(__name__)

AUTO_APPROVER = "pipeline:"  # approved_by of the training pipeline's own approval (approval=auto)


class ApprovalRefused(RegistryError):
    """The release bridge will not ship a version: its approval is missing or not valid."""


def approve(
    *,
    tracking_uri: str,
    model_name: str,
    version: str,
    alias: str = "production",
    approved_by: str,
    reason: str = "",
    signing_key: Ed25519PrivateKey | None = None,
) -> ModelRecord:
    """Tag ``version`` approved (by whom, when, UTC), point ``alias`` at it, audit the move.

    With ``signing_key`` (an approver's), the approval is also signed
    (``qcloop.approvals``): a statement over the version's exact ONNX sha256, kept as the
    tag ``qcloop.approval`` before the alias moves; the bridge checks it against
    ``release.approvers``. MLflow keeps no history of aliases, so every move is appended
    to the registered model's tags (``qcloop.audit.NNNNNN``: alias, from, to, by, at,
    why, and the key id that signed); ``alias_history`` reads them back.
    """
    if not approved_by.strip():
        raise RegistryError(f"model '{model_name}' version {version}: approved_by is empty")
    record = get_model_record(tracking_uri, model_name, str(version))  # a qcloop record
    client = _client(tracking_uri)
    what = f"model '{model_name}' version {version}"
    alias = alias.lstrip("@")
    now = utcnow()
    tags = {"approved": "true", "approved_by": approved_by, "approved_at": now.isoformat()}
    signed_by = None
    if signing_key is not None:
        signed_by = key_id(signing_key.public_key())
        statement = ApprovalStatement(
            model=model_name,
            version=record.version,
            onnx_sha256=record.onnx_sha256,
            int8_sha256=record.int8.sha256 if record.int8 else None,
            approved_by=approved_by,
            approved_at=now,
            alias=alias,
            key_id=signed_by,
        )
        tags[APPROVAL_TAG] = sign_approval(statement, signing_key).to_json()
    with _mlflow_errors(tracking_uri, what, "check the version number"):
        previous = _alias_target(client, model_name, alias)
        for key, value in tags.items():
            client.set_model_version_tag(model_name, str(version), key, value)
        client.set_registered_model_alias(model_name, alias, str(version))
        entry = {"alias": alias, "from": previous, "to": str(version), "by": approved_by}
        entry |= {"at": now.isoformat(), "why": reason}
        if signed_by:
            entry["signed_by"] = signed_by
        seq = len(alias_history(tracking_uri, model_name)) + 1
        client.set_registered_model_tag(model_name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(entry))
    signed = f", signed by key {signed_by}" if signed_by else ""
    log.info(
        "approved %s version %s -> @%s by %s%s", model_name, version, alias, approved_by, signed
    )
    if approved_by.startswith(AUTO_APPROVER):
        log.warning(
            "%s version %s is approved by the pipeline itself (%s, approval=auto): the release "
            "bridge does not release it to fleets marked production (release.production_fleets), "
            "nor to any fleet where release.approvers is set; for those, an approver approves "
            "it (`qcloop model approve %s --by NAME --key NAME.key`)",
            model_name,
            version,
            approved_by,
            version,
        )
    return get_model_record(tracking_uri, model_name, str(version))


def check_release_approval(
    settings: Settings, record: ModelRecord, *, fleet: str, variant: str = "fp32"
) -> VerifiedApproval | None:
    """Whether the bridge may release ``record`` (``variant``) to ``fleet``; why not if not.

    ``ApprovalRefused`` naming the version and what is missing when: it is not approved;
    ``fleet`` is in ``release.production_fleets`` and the pipeline approved it itself
    (approval=auto); ``release.approvers`` is set and the version carries no approval
    signed by one of those keys, for this model, version, production alias and the exact
    sha256 of the ONNX to ship. With no approvers the approval is not checked: a WARNING
    says so and None comes back.
    """
    what = f"model {record.name} version {record.version}"
    todo = f"`qcloop model approve {record.version} --by NAME --key NAME.key`"
    if not record.approved:
        raise ApprovalRefused(
            f"{what} is not approved; run `qcloop model approve {record.version}` first"
        )
    release = settings.release
    by = record.approved_by or ""
    if fleet in release.production_fleets and by.startswith(AUTO_APPROVER):
        raise ApprovalRefused(
            f"{what} was approved by the training pipeline ({by}, approval=auto), and fleet "
            f"{fleet} is a production fleet (release.production_fleets), which takes only "
            f"versions a person approved: {todo}"
        )
    if not release.approvers:
        log.warning(
            "release.approvers is not set: approvals are not checked; %s goes to fleet %s on "
            "the word of MLflow tags that anyone who can write to MLflow can set (a plant sets "
            "release.approvers, docs/deploy.md)",
            what,
            fleet,
        )
        return None
    approvers = load_approvers(release.approvers)
    client = _client(settings.mlflow.tracking_uri)
    with _mlflow_errors(settings.mlflow.tracking_uri, what, "check the version"):
        tags = client.get_model_version(record.name, record.version).tags or {}
    payload = tags.get(APPROVAL_TAG)
    if not payload:
        names = ", ".join(sorted(a.name for a in approvers.values()))
        raise ApprovalRefused(
            f"{what} carries no signed approval (tag {APPROVAL_TAG}); approved by {by or '?'} "
            f"without a key. Release needs an approval signed by one of the approvers "
            f"({names}): {todo}"
        )
    try:
        verified = verify_approval(payload, approvers, source=f"{what}: approval")
    except (IntegrityError, ContractError) as exc:
        raise ApprovalRefused(f"{exc}; not released. Approve it again: {todo}") from None
    _check_statement(settings, record, variant, verified, what, todo)
    return verified


def _check_statement(
    settings: Settings,
    record: ModelRecord,
    variant: str,
    verified: VerifiedApproval,
    what: str,
    todo: str,
) -> None:
    """The signed statement is for this model, version, alias and the exact bytes to ship."""
    statement, name = verified.statement, verified.approver.name
    alias = settings.mlflow.production_alias
    if (statement.model, statement.version) != (record.name, record.version):
        raise ApprovalRefused(
            f"{what}: its signed approval (by {name}) is for model {statement.model} version "
            f"{statement.version}, copied onto this version; not released. {todo}"
        )
    if statement.alias != alias:
        raise ApprovalRefused(
            f"{what}: {name} approved it for @{statement.alias}, not @{alias}; not released"
        )
    _, sha256, _ = variant_of(record, variant)
    signed_sha = statement.onnx_sha256 if variant == "fp32" else statement.int8_sha256
    if signed_sha != sha256:
        covered = f"sha256 {signed_sha}" if signed_sha else f"no {variant} variant"
        raise ApprovalRefused(
            f"{what}: the {variant} ONNX to ship has sha256 {sha256}, but the approval {name} "
            f"signed covers {covered}: the model changed after it was approved; not released. "
            f"Check the model, then approve it again: {todo}"
        )


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

"""Signed approvals: an approver's Ed25519 key vouches for the exact model a version ships.

``qcloop model approve VERSION --by NAME --key NAME.key`` writes an ``ApprovalStatement``
once (registered model name, version, the ONNX sha256 (and the INT8 one, if any), who,
when, for which alias, the key id) and signs those bytes, as ``qcloop.signing`` signs
releases. The envelope is kept as the tag ``qcloop.approval`` of the model version::

    {"signed": "<base64 of the ApprovalStatement JSON>",
     "signatures": [{"keyid": "<16 hex digits>", "sig": "<base64 Ed25519 signature>"}]}

The release bridge (``components.audit.check_release_approval``) releases a version only
when a key of ``release.approvers`` signed a statement for that very version, alias and
sha256: MLflow's own permissions cannot tell "register a version" from "move the
production alias" (both need EDIT on the registered model), a key kept by a person can.
Approvers' public keys are PEM files (``qcloop keys generate --name alice``); a folder
in ``release.approvers`` stands for every ``*.pub`` in it, and a key's name is its file
name without ``.pub``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, Field

from qcloop.contracts import (
    KEY_ID_RE,
    SCHEMA_VERSION,
    SHA256_RE,
    Contract,
    ReleaseSignature,
)
from qcloop.errors import ConfigError, ContractError, IntegrityError
from qcloop.signing import (
    key_id,
    load_public_key,
    public_key_files,
    signature,
    signature_checks,
)

APPROVAL_TAG = "qcloop.approval"  # model version tag holding the signed approval's envelope


class ApprovalStatement(Contract):
    """What an approver signs: this version of this model, with these exact bytes, for an alias."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: str = Field(min_length=1, description="registered model name")
    version: str = Field(min_length=1)
    onnx_sha256: str = Field(pattern=SHA256_RE, description="the fp32 ONNX the version ships")
    int8_sha256: str | None = Field(
        default=None, pattern=SHA256_RE, description="its INT8 variant, if it had one then"
    )
    approved_by: str = Field(min_length=1)
    approved_at: AwareDatetime
    alias: str = Field(min_length=1, description="the alias the approval moves, e.g. production")
    key_id: str = Field(pattern=KEY_ID_RE, description="qcloop.signing.key_id of the signer")


class ApprovalEnvelope(Contract):
    """A statement's exact bytes (base64) and their signatures, as the tag keeps them."""

    signed: str = Field(min_length=1, description="base64 of the exact ApprovalStatement JSON")
    signatures: list[ReleaseSignature] = Field(min_length=1, max_length=8)


@dataclass(frozen=True)
class Approver:
    """A public key allowed to approve, and the name of its file."""

    name: str
    key: Ed25519PublicKey
    path: Path


@dataclass(frozen=True)
class VerifiedApproval:
    """A statement whose signature verified, by whom, and the envelope as it came."""

    statement: ApprovalStatement
    approver: Approver
    payload: str

    def covers(self, model: str, version: str, variant: str, sha256: str) -> str | None:
        """Why this approval is not for that model, version and exact ONNX; None if it is."""
        statement, name = self.statement, self.approver.name
        if (statement.model, statement.version) != (model, version):
            return (
                f"the approval signed by {name} is for model {statement.model} version "
                f"{statement.version}, not {model} version {version}"
            )
        approved = statement.int8_sha256 if variant == "int8" else statement.onnx_sha256
        if approved != sha256:
            return (
                f"the approval signed by {name} is for the {variant} ONNX sha256 "
                f"{(approved or 'none')[:12]}..., not {sha256[:12]}...: another file"
            )
        return None


def sign_approval(statement: ApprovalStatement, key: Ed25519PrivateKey) -> ApprovalEnvelope:
    """Write ``statement`` once, naming ``key``'s id, and sign those bytes."""
    body = statement.model_copy(update={"key_id": key_id(key.public_key())}).to_json().encode()
    return ApprovalEnvelope(
        signed=base64.b64encode(body).decode(), signatures=[signature(body, key)]
    )


def load_approvers(paths: list[Path]) -> dict[str, Approver]:
    """The approvers' public keys by key id: each path a PEM file or a folder of ``*.pub``.

    ``ConfigError`` when a path is missing or unreadable, or when they hold no key at all:
    an approver list that lets nobody approve is a mistake, not an open door.
    """
    approvers: dict[str, Approver] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"release.approvers: {path}: no such file or folder")
        for file in public_key_files(path):
            key = load_public_key(file)
            approvers[key_id(key)] = Approver(file.name.removesuffix(".pub"), key, file)
    if paths and not approvers:
        listed = ", ".join(str(p) for p in paths)
        raise ConfigError(f"release.approvers ({listed}) holds no public key (*.pub)")
    return approvers


def verify_approval(
    payload: str, approvers: dict[str, Approver], *, source: str = "approval"
) -> VerifiedApproval:
    """Verify an approval envelope's signed bytes with ``approvers``' keys, then parse them.

    ``IntegrityError`` when no approver signed it or a signature fails (altered bytes);
    ``ContractError`` when the envelope or the statement breaks its contract.
    """
    envelope = ApprovalEnvelope.from_json(payload, source=source)
    try:
        body = base64.b64decode(envelope.signed, validate=True)
    except ValueError:
        raise ContractError(f"{source}: field 'signed' is not base64") from None
    keys = {keyid: approver.key for keyid, approver in approvers.items()}
    checks = signature_checks(body, envelope.signatures, keys)
    unknown = [keyid for keyid, ok in checks if ok is None]
    for keyid, ok in checks:  # the first signature by an approver decides
        if ok is None:
            continue
        approver = approvers[keyid]
        if not ok:
            raise IntegrityError(
                f"{source}: bad signature by approver {approver.name} (key {keyid}): "
                "the approval was altered after it was signed"
            )
        statement = ApprovalStatement.from_json(body, source=source)
        if statement.key_id != keyid:
            raise IntegrityError(
                f"{source}: signed by key {keyid} but names key {statement.key_id}"
            )
        return VerifiedApproval(statement, approver, payload)
    known = ", ".join(f"{a.name} ({k})" for k, a in sorted(approvers.items()))
    raise IntegrityError(
        f"{source}: signed by key {', '.join(unknown)}, which is not on the approver list "
        f"(release.approvers: {known})"
    )

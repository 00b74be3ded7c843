"""Signed approvals: the approver list, and a statement's signature over its exact bytes."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import pytest

from qcloop.approvals import (
    ApprovalEnvelope,
    ApprovalStatement,
    load_approvers,
    sign_approval,
    verify_approval,
)
from qcloop.errors import ConfigError, ContractError, IntegrityError
from qcloop.signing import generate_keypair, key_id, load_private_key


def _statement(keyid: str) -> ApprovalStatement:
    return ApprovalStatement(
        model="det",
        version="3",
        onnx_sha256="a" * 64,
        approved_by="alice",
        approved_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        alias="production",
        key_id=keyid,
    )


def test_the_approver_list_is_files_or_folders_and_never_empty(tmp_path: Path) -> None:
    # given two approvers' public keys in a folder and a third one alone
    for name in ("alice", "bob"):
        generate_keypair(tmp_path / "approvers", name)
    _, carol = generate_keypair(tmp_path / "other", "carol")
    # then a folder stands for its *.pub, a file for itself, each named after its file
    found = load_approvers([tmp_path / "approvers", carol])
    assert sorted(a.name for a in found.values()) == ["alice", "bob", "carol"]
    assert all(key_id(a.key) == k for k, a in found.items())
    # and a list that holds no key, or names a missing path, is a configuration error
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no public key"):
        load_approvers([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_approvers([tmp_path / "missing.pub"])
    assert load_approvers([]) == {}


def test_a_signature_covers_the_statements_exact_bytes(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path / "approvers", "alice")
    key = load_private_key(private)
    approvers = load_approvers([tmp_path / "approvers"])
    # a signed statement verifies with the list, naming who signed
    envelope = sign_approval(_statement("0" * 16), key)
    verified = verify_approval(envelope.to_json(), approvers)
    assert verified.approver.name == "alice"
    assert verified.statement.key_id == key_id(key.public_key())  # the signer's id, written in
    # a statement altered after signing (here: another sha256) does not
    body = base64.b64decode(envelope.signed).replace(b'"' + b"a" * 64, b'"' + b"b" * 64)
    forged = envelope.model_copy(update={"signed": base64.b64encode(body).decode()})
    with pytest.raises(IntegrityError, match="bad signature by approver alice"):
        verify_approval(forged.to_json(), approvers)
    # nor one signed by a key off the list, nor a tag that is no envelope at all
    other, _ = generate_keypair(tmp_path / "elsewhere", "mallory")
    stranger = sign_approval(_statement("0" * 16), load_private_key(other))
    with pytest.raises(IntegrityError, match="not on the approver list"):
        verify_approval(stranger.to_json(), approvers)
    with pytest.raises(ContractError, match="ApprovalEnvelope"):
        verify_approval('{"signed": "x", "signatures": []}', approvers)
    assert ApprovalEnvelope.from_json(envelope.to_json()) == envelope

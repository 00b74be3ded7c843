"""Signed release envelopes: the signature covers the exact bytes, then they are parsed."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from qcloop.contracts import ModelRef, ReleaseEnvelope, ReleaseMessage, utcnow
from qcloop.errors import ContractError, IntegrityError
from qcloop.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_keys,
    open_envelope,
    seal,
    unverified,
)


def release(**changes: object) -> ReleaseMessage:
    fields: dict[str, object] = {
        "fleet": "line-1",
        "model": ModelRef(name="det", version="3"),
        "sha256": "a" * 64,
        "size": 10,
        "url": "s3://qcloop/models/det/3/model.onnx",
        "input_size": 320,
        "class_names": ["scratch"],
        "released_by": "bridge",
        "sequence": 7,
        "expires_at": utcnow() + timedelta(days=30),
    }
    fields.update(changes)
    return ReleaseMessage.model_validate(fields)


def rewritten(payload: bytes, edit: dict[str, object], drop: tuple[str, ...] = ()) -> bytes:
    """The envelope with its signed JSON edited, its signatures kept."""
    envelope = ReleaseEnvelope.from_json(payload)
    body = json.loads(base64.b64decode(envelope.signed))
    body = {k: v for k, v in body.items() if k not in drop} | edit
    forged = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    return envelope.model_copy(update={"signed": forged}).to_json().encode()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


def test_a_sealed_release_opens_with_its_key_named_in_it(keys: tuple[Path, Path]) -> None:
    private, public = keys
    trusted = load_public_keys([public])
    sealed = seal(release(), load_private_key(private))
    # the key id: the first 16 hex digits of the sha256 of the raw public key
    raw = (
        load_private_key(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert list(trusted) == [hashlib.sha256(raw).hexdigest()[:16]]
    opened = open_envelope(sealed.payload(), trusted)
    assert opened.verified_by == opened.message.key_id == key_id(trusted[opened.verified_by])
    assert opened.message == sealed.message and opened.message.sequence == 7
    # the envelope may be re-serialised (last-good.json): the signed bytes do not change
    pretty = json.dumps(json.loads(sealed.payload()), indent=2)
    assert open_envelope(pretty, trusted).message == sealed.message


def test_a_stripped_default_field_or_a_changed_one_breaks_the_signature(
    keys: tuple[Path, Path],
) -> None:
    private, public = keys
    trusted = load_public_keys([public])
    payload = seal(release(), load_private_key(private)).payload()
    # thresholds and variant hold their defaults: stripping them yields the same release...
    stripped = rewritten(payload, {}, drop=("thresholds", "variant"))
    assert (
        unverified(ReleaseEnvelope.from_json(stripped)).message
        == unverified(ReleaseEnvelope.from_json(payload)).message
    )
    # ...and still no signature check passes, nor for a higher sequence
    for forged in (stripped, rewritten(payload, {"sequence": 8})):
        with pytest.raises(IntegrityError, match="bad signature by key"):
            open_envelope(forged, trusted)


def test_unsigned_and_untrusted_releases_are_refused_unless_allowed(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    public = keys[1]
    stranger, _ = generate_keypair(tmp_path / "stranger")
    trusted = load_public_keys([public])
    bare = seal(release(), None)
    assert bare.envelope.signatures == [] and bare.message.key_id is None
    with pytest.raises(IntegrityError, match="unsigned"):
        open_envelope(bare.payload(), trusted)
    assert open_envelope(bare.payload(), trusted, allow_unsigned=True).verified_by is None
    theirs = seal(release(), load_private_key(stranger))
    with pytest.raises(IntegrityError, match=f"key {theirs.message.key_id}, which is not trusted"):
        open_envelope(theirs.payload(), trusted)


def test_broken_envelopes_are_contract_errors(keys: tuple[Path, Path]) -> None:
    trusted = load_public_keys([keys[1]])
    for payload in (b"{}", b'{"signed": "***", "signatures": []}', b"[]"):
        with pytest.raises(ContractError):
            open_envelope(payload, trusted, allow_unsigned=True)
    not_a_release = base64.b64encode(b'{"fleet": "x"}').decode()
    with pytest.raises(ContractError, match="ReleaseMessage"):
        open_envelope(json.dumps({"signed": not_a_release}), trusted, allow_unsigned=True)


def test_a_folder_of_public_keys_trusts_each_key_in_it(tmp_path: Path) -> None:
    from qcloop.errors import ConfigError

    # Given the old and the new release key in one folder, as a mounted ConfigMap has them
    old_private, old_public = generate_keypair(tmp_path / "old")
    new_private, new_public = generate_keypair(tmp_path / "new")
    folder = tmp_path / "release-keys"
    folder.mkdir()
    (folder / "old.pub").write_bytes(old_public.read_bytes())
    (folder / "new.pub").write_bytes(new_public.read_bytes())
    (folder / "README").write_text("not a key")
    trusted = load_public_keys([folder])
    # Then a release sealed by either opens, and only the *.pub files were read
    assert len(trusted) == 2
    for private in (old_private, new_private):
        sealed = open_envelope(seal(release(), load_private_key(private)).payload(), trusted)
        assert sealed.verified_by == key_id(load_private_key(private).public_key())
    # An empty folder is a mistake, not "trust nothing"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="a folder without public keys"):
        load_public_keys([tmp_path / "empty"])

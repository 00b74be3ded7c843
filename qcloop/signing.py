"""Signed release envelopes, as TUF signs its metadata: the bridge signs, devices verify.

What a release topic carries (``qcloop.contracts.ReleaseEnvelope``)::

    {"signed": "<base64 of the ReleaseMessage JSON: the exact bytes the bridge wrote>",
     "signatures": [{"keyid": "<16 hex digits>", "sig": "<base64 Ed25519 signature>"}]}

A signature covers the decoded ``signed`` bytes themselves, not a re-serialisation of
the message: a reader verifies them first and only then parses them as a
``ReleaseMessage``, so no field can be added, changed or stripped without breaking the
signature, and the envelope itself may be re-serialised freely (``last-good.json``).
The message names the ``key_id`` that signs it, its fleet ``sequence`` and when it
``expires_at``; ``edge_agent.trust`` says what a device does with them. A key id is the
first 16 hex digits of the sha256 of the public key's 32 raw bytes, so a device can
trust several keys at once (rotation: the old and the new). An envelope without
signatures is an unsigned release, which only devices set to
``release.insecure_unsigned`` take.

Keys are PEM files: PKCS#8 private key (bridge, from a Secret), SubjectPublicKeyInfo
public key (devices). ``qcloop keys generate`` makes a pair.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qcloop.contracts import ReleaseEnvelope, ReleaseMessage, ReleaseSignature
from qcloop.errors import ConfigError, ContractError, IntegrityError

KEY_ID_HEX = 16
TrustedKeys = Mapping[str, Ed25519PublicKey]  # key id -> public key


@dataclass(frozen=True)
class SealedRelease:
    """A release and the envelope that carries it byte for byte.

    ``verified_by``: the key id whose signature verified; None for an unsigned release
    (or one read without checking, ``unverified``)."""

    message: ReleaseMessage
    envelope: ReleaseEnvelope
    verified_by: str | None = None

    def payload(self) -> bytes:
        """The bytes to publish."""
        return self.envelope.to_json().encode()


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the key's raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; ``ConfigError`` naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key; make one with `qcloop keys generate`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key; ``ConfigError`` naming the file otherwise."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key")
    return key


def public_key_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.pub`` files of a folder (a mounted ConfigMap), sorted."""
    path = Path(path)
    return sorted(p for p in path.glob("*.pub") if p.is_file()) if path.is_dir() else [path]


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """The public keys in ``paths`` by key id: each a PEM file, or a folder of ``*.pub``;
    ``ConfigError`` naming a bad file or an empty folder."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        files = public_key_files(path)
        if not files:
            raise ConfigError(f"{path}: a folder without public keys (*.pub)")
        for file in files:
            key = load_public_key(file)
            keys[key_id(key)] = key
    return keys


def signature(body: bytes, key: Ed25519PrivateKey) -> ReleaseSignature:
    """``key``'s Ed25519 signature of the exact ``body`` (base64), with the key's id."""
    return ReleaseSignature(
        keyid=key_id(key.public_key()), sig=base64.b64encode(key.sign(body)).decode()
    )


def signature_checks(
    body: bytes, signatures: Iterable[ReleaseSignature], keys: TrustedKeys
) -> list[tuple[str, bool | None]]:
    """Each signature's key id, in order, and whether it verifies ``body`` with ``keys``
    (None: a key not among ``keys``)."""
    checks: list[tuple[str, bool | None]] = []
    for signed in signatures:
        key = keys.get(signed.keyid)
        if key is None:
            checks.append((signed.keyid, None))
            continue
        try:
            key.verify(base64.b64decode(signed.sig, validate=True), body)
            checks.append((signed.keyid, True))
        except (InvalidSignature, binascii.Error, ValueError):
            checks.append((signed.keyid, False))
    return checks


def seal(message: ReleaseMessage, key: Ed25519PrivateKey | None) -> SealedRelease:
    """Write ``message`` once (naming ``key``'s id) and sign those bytes; unsigned without key."""
    if key is not None:
        message = message.model_copy(update={"key_id": key_id(key.public_key())})
    body = message.to_json().encode()
    signatures = [signature(body, key)] if key is not None else []
    envelope = ReleaseEnvelope(signed=base64.b64encode(body).decode(), signatures=signatures)
    verified_by = signatures[0].keyid if signatures else None
    return SealedRelease(ReleaseMessage.from_json(body), envelope, verified_by)


def signed_bytes(envelope: ReleaseEnvelope, source: str = "release") -> bytes:
    """The exact bytes an envelope's signatures cover (``ContractError`` if not base64)."""
    try:
        return base64.b64decode(envelope.signed, validate=True)
    except (binascii.Error, ValueError):
        raise ContractError(f"{source}: field 'signed' is not base64") from None


def open_envelope(
    payload: bytes | str | ReleaseEnvelope,
    trusted: TrustedKeys,
    *,
    allow_unsigned: bool = False,
    source: str = "release",
) -> SealedRelease:
    """Verify an envelope's signed bytes with ``trusted`` keys, then parse them.

    ``IntegrityError`` when a trusted key's signature fails (altered bytes), or when no
    trusted key signed it, unless ``allow_unsigned`` (then ``verified_by`` is None);
    ``ContractError`` when the envelope or the message in it breaks its contract.
    """
    envelope = (
        payload
        if isinstance(payload, ReleaseEnvelope)
        else ReleaseEnvelope.from_json(payload, source=source)
    )
    body = signed_bytes(envelope, source)
    verified_by = _verify(envelope, body, trusted, allow_unsigned, source)
    message = ReleaseMessage.from_json(body, source=source)
    if verified_by is not None and message.key_id != verified_by:
        raise IntegrityError(
            f"{source}: signed by key {verified_by} but names key {message.key_id}; not trusted"
        )
    return SealedRelease(message, envelope, verified_by)


def unverified(envelope: ReleaseEnvelope) -> SealedRelease:
    """The release an envelope carries, NOT verified: for display and bookkeeping only."""
    message = ReleaseMessage.from_json(signed_bytes(envelope), source="release envelope")
    return SealedRelease(message, envelope)


def _verify(
    envelope: ReleaseEnvelope, body: bytes, trusted: TrustedKeys, allow_unsigned: bool, source: str
) -> str | None:
    """The id of a trusted key whose signature verifies; None if allowed unsigned."""
    checks = signature_checks(body, envelope.signatures, trusted)
    verified = [keyid for keyid, ok in checks if ok]
    if verified:
        return verified[0]
    failed = [keyid for keyid, ok in checks if ok is False]
    if failed:
        raise IntegrityError(
            f"{source}: bad signature by key {failed[0]}: altered or forged bytes; not installed"
        )
    if allow_unsigned:
        return None
    if not envelope.signatures:
        raise IntegrityError(f"{source}: unsigned; the bridge must sign releases")
    signers = ", ".join(s.keyid for s in envelope.signatures)
    known = ", ".join(sorted(trusted)) or "none"
    raise IntegrityError(
        f"{source}: signed by key {signers}, which is not trusted (trusted: {known}); "
        "add the bridge's public key to release.public_keys"
    )


def generate_keypair(out_dir: Path, name: str = "release") -> tuple[Path, Path]:
    """Write ``<name>.key`` (private, mode 600) and ``<name>.pub`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if private.exists():
        raise ConfigError(f"{private}: exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public

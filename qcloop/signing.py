"""Ed25519 signatures of release messages: the bridge signs, every device verifies.

The signed bytes are the message without its ``signature`` field, as JSON with
sorted keys and no spaces, so that any implementation can reproduce them. The
signature travels base64-encoded in ``ReleaseMessage.signature``.
Keys are PEM files: PKCS#8 private key (bridge, from a Secret), SubjectPublicKeyInfo
public key (devices). ``qcloop keys generate`` makes a pair.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qcloop.contracts import ReleaseMessage
from qcloop.errors import ConfigError, IntegrityError


def signed_bytes(message: ReleaseMessage) -> bytes:
    """The canonical bytes a signature covers (everything but ``signature``)."""
    body = message.model_dump(mode="json", exclude={"signature"})
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


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


def sign_release(message: ReleaseMessage, key: Ed25519PrivateKey) -> ReleaseMessage:
    """A copy of ``message`` carrying its signature."""
    signature = base64.b64encode(key.sign(signed_bytes(message))).decode()
    return message.model_copy(update={"signature": signature})


def verify_release(message: ReleaseMessage, key: Ed25519PublicKey) -> None:
    """Raise ``IntegrityError`` unless ``message`` carries a valid signature by ``key``."""
    where = f"release {message.model.name}/{message.model.version} for fleet {message.fleet}"
    if not message.signature:
        raise IntegrityError(f"{where}: unsigned; the bridge must sign releases")
    try:
        raw = base64.b64decode(message.signature, validate=True)
        key.verify(raw, signed_bytes(message))
    except (InvalidSignature, binascii.Error, ValueError):
        raise IntegrityError(f"{where}: bad signature; not trusted, not installed") from None


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

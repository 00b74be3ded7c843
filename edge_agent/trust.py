"""Which release payloads a device takes: TUF's checks on the signed envelope, in order.

    payload --> envelope: a signature by a trusted key over the exact signed bytes
            --> those bytes parsed as a ReleaseMessage --> for this device's fleet?
            --> not expired? --> sequence above the highest taken (or that one again,
                byte for byte)? --> recorded on disk --> the loader downloads the model

With ``release.approvers`` set (a plant that wants it), a release must also carry an
approval (``ReleaseMessage.approval``) signed by one of those keys for that very model,
version and ONNX sha256: not even the bridge's key alone makes a device run a model no
approver signed for. Any failure refuses the payload with its reason (the loader logs
it, counts it in ``releases_refused``, and the served model stays). The trusted keys are
``release.public_key`` and ``release.public_keys`` (the old and the new key while keys
rotate); unsigned releases are taken only with ``release.insecure_unsigned``, with a
WARNING at start and on every one taken. The highest sequence taken per fleet is written
atomically to ``<state_dir>/release-sequence.json`` before the model is fetched, so a
restart, an older signed release replayed, or one retained on the device's own topic
never takes a device back: a rollback is a new release (higher sequence) of an older
model. Models kept on disk (``last-good.json``) keep their envelope and are verified
again at start with today's keys; their sequence and expiry are not looked at again
(they were taken when new, and a box that boots offline keeps inspecting).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import NO_RELEASE_KEY, EdgeConfig
from qcloop.approvals import load_approvers, verify_approval
from qcloop.contracts import SHA256_RE, ReleaseEnvelope, ReleaseMessage, utcnow
from qcloop.errors import ConfigError, ContractError, IntegrityError
from qcloop.fsutil import atomic_write
from qcloop.signing import SealedRelease, load_public_keys, open_envelope, signed_bytes
from qcloop.storage import sha256_bytes

log = logging.getLogger(__name__)

SEQUENCE_FILE = "release-sequence.json"

__all__ = ["SEQUENCE_FILE", "ReleaseGate"]


class Taken(BaseModel):
    """The newest release a device took for one fleet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sequence: int = Field(ge=1)
    sha256: str = Field(pattern=SHA256_RE, description="of its signed bytes")


class SequenceRecord(BaseModel):
    """Content of ``release-sequence.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fleets: dict[str, Taken] = {}


class ReleaseGate:
    """Verifies release payloads and keeps the highest sequence taken (one loader thread)."""

    def __init__(self, config: EdgeConfig) -> None:
        """Load the trusted keys (``ConfigError`` naming a bad file, or none given)."""
        release = config.release
        paths = ([release.public_key] if release.public_key else []) + list(release.public_keys)
        self.keys = load_public_keys(paths)
        self.insecure = release.insecure_unsigned
        if not self.keys and not self.insecure:
            raise ConfigError(NO_RELEASE_KEY)
        self.approvers = load_approvers(release.approvers)
        self.fleet = config.fleet
        self.path = Path(config.state_dir) / SEQUENCE_FILE
        self._record = _read(self.path)
        if self.insecure:
            log.warning(
                "release.insecure_unsigned = true: unsigned releases are taken, so whoever "
                "can publish on the broker decides what this device runs (labs only)",
                extra={"trusted_keys": sorted(self.keys)},
            )

    def __repr__(self) -> str:
        return f"ReleaseGate(fleet={self.fleet!r}, keys={sorted(self.keys)!r})"

    def highest(self) -> int:
        """The highest sequence taken for this device's fleet (0: none yet)."""
        taken = self._record.fleets.get(self.fleet)
        return taken.sequence if taken else 0

    def admit(self, payload: bytes, origin: str = "fleet") -> SealedRelease:
        """The release in ``payload`` if this device may take it; ``QcloopError`` saying why not."""
        source = f"{origin} release"
        sealed = open_envelope(payload, self.keys, allow_unsigned=self.insecure, source=source)
        message = sealed.message
        if message.fleet != self.fleet:
            raise ContractError(f"{source} is for fleet '{message.fleet}', not '{self.fleet}'")
        if message.expires_at <= utcnow():
            raise IntegrityError(
                f"{source} #{message.sequence} expired at {message.expires_at.isoformat()}; "
                "the bridge publishes a release anew before it expires (`qcloop release watch`)"
            )
        self._check_sequence(sealed, source)
        self._check_approval(message, source)
        if sealed.verified_by is None:
            log.warning(
                "unsigned release taken (release.insecure_unsigned = true)",
                extra={"origin": origin, "sequence": message.sequence},
            )
        return sealed

    def accept(self, sealed: SealedRelease) -> None:
        """Record ``sealed`` as the newest taken, on disk and atomically (``OSError``)."""
        sequence = sealed.message.sequence
        if sequence <= self.highest():
            return
        digest = sha256_bytes(signed_bytes(sealed.envelope))
        fleets = {**self._record.fleets, self.fleet: Taken(sequence=sequence, sha256=digest)}
        record = SequenceRecord(fleets=fleets)
        atomic_write(self.path, (record.model_dump_json(indent=2) + "\n").encode())
        self._record = record

    def verify_stored(self, envelope: ReleaseEnvelope, source: str) -> SealedRelease:
        """A release kept on disk, its signature checked with today's keys."""
        sealed = open_envelope(envelope, self.keys, allow_unsigned=self.insecure, source=source)
        self._check_approval(sealed.message, source)
        if sealed.verified_by is None:
            log.warning("unsigned model from disk (release.insecure_unsigned = true)")
        return sealed

    def _check_approval(self, message: ReleaseMessage, source: str) -> None:
        """With approvers configured: an approval one of them signed, for this exact model."""
        if not self.approvers:
            return
        what = f"{source} #{message.sequence} ({message.model.name} v{message.model.version})"
        if message.approval is None:
            raise IntegrityError(
                f"{what} carries no signed approval, and this device takes only approved "
                "models (release.approvers); the bridge passes approvals on once it has "
                "release.approvers too"
            )
        verified = verify_approval(message.approval, self.approvers, source=f"{what}: approval")
        model = message.model
        problem = verified.covers(model.name, model.version, message.variant, message.sha256)
        if problem:
            raise IntegrityError(f"{what}: {problem}")

    def _check_sequence(self, sealed: SealedRelease, source: str) -> None:
        taken = self._record.fleets.get(self.fleet)
        sequence = sealed.message.sequence
        if taken is None or sequence > taken.sequence:
            return
        if sequence < taken.sequence:
            raise IntegrityError(
                f"{source} #{sequence} is older than #{taken.sequence}, the newest this device "
                f"took for fleet {self.fleet}: a replay or a stale message. Going back to an "
                "older model is a new release of it"
            )
        if sha256_bytes(signed_bytes(sealed.envelope)) != taken.sha256:
            raise IntegrityError(f"{source} #{sequence} differs from the #{sequence} taken")


def _read(path: Path) -> SequenceRecord:
    try:
        return SequenceRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return SequenceRecord()
    except (OSError, ValidationError) as exc:
        log.error(
            "release sequence record unreadable, starting from none",
            extra={"path": str(path), "error": str(exc)},
        )
        return SequenceRecord()

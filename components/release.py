"""Release bridge: an approved MLflow model version -> a signed, retained release on MQTT.

The ONNX is copied from MLflow into the object store under
``models/<name>/<version>/model.onnx`` (where devices can fetch it without
MLflow credentials), its sha256 is checked, and a ``ReleaseMessage`` naming it is
signed (``qcloop.signing``: an envelope over its exact bytes) and published retained
on ``qcloop/fleets/<fleet>/release``.

Each release of a fleet gets the next ``sequence``: one more than the highest published
for it, as recorded in the store (``releases/<fleet>/latest.json``) and as retained on
the broker. Every number is claimed once, create-only (``releases/<fleet>/<sequence>.json``,
which also keeps every release published), so a restarted bridge, a new one, or two at
once never reuse one. Devices refuse a sequence lower than one they took: going back to
an older model is a new release of it (``qcloop release --ref 3``). A release expires
``release.expires_after_days`` after it is published; the watching bridge publishes the
same model anew (next sequence) at half that age.

With ``release.presigned_urls`` the release names the model by a presigned GET URL
(``presigned_url``) instead of ``s3://``: a device fetches it over plain http(s) without
store credentials, still capped at the signed size and checked against the signed sha256.
The URL lives as long as the release, which then expires within ``PRESIGN_MAX`` (S3's
limit); the watching bridge publishes it anew at half that age, with a fresh URL.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.audit import ApprovalRefused, check_release_approval
from components.registry import download_onnx, get_model_record, variant_of
from qcloop.contracts import (
    ModelRecord,
    ModelRef,
    ReleaseEnvelope,
    ReleaseMessage,
    Thresholds,
    utcnow,
)
from qcloop.errors import (
    ContractError,
    ObjectNotFound,
    QcloopError,
    RegistryError,
    StoreError,
)
from qcloop.mqtt import publish_retained, read_retained, release_topic
from qcloop.params import INT8_DEFAULT_DROP, LETTERBOX
from qcloop.settings import Settings, StoreSettings
from qcloop.signing import SealedRelease, load_private_key, seal, unverified
from qcloop.storage import ObjectStore, open_store, presigned_get, released_key

log = logging.getLogger(__name__)

MAX_INT8_DROP = 0.02  # mAP50-95 an INT8 variant may lose against its FP32 before it ships
MAX_CLAIMS = 100  # sequence numbers tried when other bridges claimed the next ones
PRESIGN_MAX = timedelta(days=7)  # the longest an S3 presigned URL (SigV4) is valid


def check_int8_accuracy(record: ModelRecord, max_drop: float = MAX_INT8_DROP) -> None:
    """Refuse (``RegistryError``) an INT8 variant that scores more than ``max_drop``
    mAP50-95 below its FP32 model on the same test split."""
    if record.int8 is None:
        return
    fp32, int8 = record.metrics.map50_95, record.int8.metrics.map50_95
    if fp32 - int8 > max_drop:
        raise RegistryError(
            f"the INT8 variant of model {record.name} version {record.version} scores "
            f"mAP50-95 {int8:.4f} on the test split, {fp32 - int8:.4f} below its FP32 "
            f"({fp32:.4f}; at most {max_drop:g} allowed): release the fp32 variant, or "
            "accept the loss with --max-int8-drop"
        )


def choose_variant(record: ModelRecord, variant: str = "auto") -> tuple[str, str]:
    """The ONNX to ship and why: ``fp32``/``int8`` as asked; ``auto``: the INT8 when its
    test mAP50-95 is at most ``INT8_DEFAULT_DROP`` below its FP32's, else the FP32."""
    if variant != "auto":
        return variant, f"{variant} asked for"
    if record.int8 is None:
        return "fp32", "auto: no INT8 variant registered (qcloop model quantize)"
    fp32, int8 = record.metrics.map50_95, record.int8.metrics.map50_95
    within = fp32 - int8 <= INT8_DEFAULT_DROP
    return (
        "int8" if within else "fp32",
        f"auto: INT8 mAP50-95 {int8:.4f} against FP32 {fp32:.4f} on the test split, "
        f"{'within' if within else 'more than'} {INT8_DEFAULT_DROP:g} below",
    )


def scoring_thresholds(given: Thresholds | None = None) -> Thresholds:
    """The thresholds a release carries: ``given`` (or the defaults, which the evaluation
    scored the model with), with the evaluation's letterbox unless ``given`` names one."""
    thresholds = given or Thresholds()
    if thresholds.letterbox is None:
        return thresholds.model_copy(update={"letterbox": LETTERBOX})
    return thresholds


def model_key(name: str, version: str, variant: str = "fp32") -> str:
    """Object-store key of a released ONNX."""
    return f"models/{name}/{version}/model{'' if variant == 'fp32' else '-' + variant}.onnx"


def presigned_url(
    store: StoreSettings, key: str, valid_for: timedelta, endpoint: str | None = None
) -> str:
    """A GET URL of ``key`` that needs no credentials, valid for ``valid_for`` (at most
    ``PRESIGN_MAX``), signed with the store user of ``store`` for ``endpoint`` (the store as
    the devices reach it; default ``store.endpoint``). Computed here, no request sent."""
    return presigned_get(store, key, min(valid_for, PRESIGN_MAX), endpoint)


def model_location(settings: Settings, store: ObjectStore, key: str) -> tuple[str, timedelta]:
    """The URL a release names the model at ``key`` by, and how long the release is valid:
    ``release.expires_after_days``, or with ``release.presigned_urls`` a fresh presigned URL
    and at most ``PRESIGN_MAX`` (the URL and the release expire together)."""
    valid_for = timedelta(days=settings.release.expires_after_days)
    if not settings.release.presigned_urls:
        return store.url(key), valid_for
    valid_for = min(valid_for, PRESIGN_MAX)
    endpoint = settings.release.presign_endpoint
    return presigned_url(settings.store, key, valid_for, endpoint), valid_for


def sequence_key(fleet: str, sequence: int) -> str:
    """Object-store key of the release of ``fleet`` numbered ``sequence`` (its envelope)."""
    return f"releases/{fleet}/{sequence:010d}.json"


def latest_key(fleet: str) -> str:
    """Object-store key of the newest release of ``fleet`` (its envelope)."""
    return f"releases/{fleet}/latest.json"


def fleet_key(fleet: str) -> str:
    """Object-store key of the release last published on ``fleet``'s topic (its envelope)."""
    return f"releases/{fleet}/fleet.json"


def highest_sequence(settings: Settings, store: ObjectStore, fleet: str) -> int:
    """The highest sequence published for ``fleet``: recorded in the store, retained on the
    broker (read, not trusted: it can only raise the number); 0 before the first."""
    return max(_recorded_sequence(store, fleet), _retained_sequence(settings, fleet))


def _recorded_sequence(store: ObjectStore, fleet: str) -> int:
    try:
        latest = ReleaseEnvelope.from_json(store.get_bytes(latest_key(fleet)), source=fleet)
        return unverified(latest).message.sequence
    except (ObjectNotFound, ContractError):  # lost or broken: the claimed numbers say it too
        names = (key.rsplit("/", 1)[-1] for key in store.list(f"releases/{fleet}/"))
        return max((int(n[:-5]) for n in names if re.fullmatch(r"\d+\.json", n)), default=0)


def _retained_sequence(settings: Settings, fleet: str) -> int:
    topic = release_topic(fleet)
    try:
        payload = read_retained(settings.mqtt, topic)
        if payload is None:
            return 0
        return unverified(ReleaseEnvelope.from_json(payload, source=topic)).message.sequence
    except QcloopError as exc:  # broker down (the publish will say so), or no envelope there
        log.warning("retained release not read", extra={"topic": topic, "error": str(exc)})
        return 0


def claim_sequence(
    settings: Settings,
    store: ObjectStore,
    fleet: str,
    make: Callable[[int], ReleaseMessage],
    key: Ed25519PrivateKey | None,
) -> SealedRelease:
    """Seal ``make(sequence)`` under the next free sequence of ``fleet``, claimed in the store."""
    sequence = highest_sequence(settings, store, fleet) + 1
    for _ in range(MAX_CLAIMS):
        sealed = seal(make(sequence), key)
        payload = sealed.payload()
        if store.put_bytes_if_absent(sequence_key(fleet, sequence), payload, "application/json"):
            store.put_bytes(latest_key(fleet), payload, "application/json")
            return sealed
        sequence += 1  # another bridge took it
    raise StoreError(f"no free release sequence for fleet {fleet} after {MAX_CLAIMS} tries")


def build_release(
    settings: Settings,
    *,
    ref: str | None = None,
    released_by: str,
    thresholds: Thresholds | None = None,
    fleet: str | None = None,
    variant: str = "auto",
    max_int8_drop: float = MAX_INT8_DROP,
) -> SealedRelease:
    """Copy the approved model's ONNX (``variant`` fp32, int8 or auto: ``choose_variant``)
    into the object store;
    return its release, signed with ``release.signing_key``, under the fleet's next
    sequence. A version whose approval does not hold for ``fleet`` is refused before
    anything is copied (``components.audit.check_release_approval``: not approved, the
    pipeline's own approval for a production fleet, no valid approval signed by one of
    ``release.approvers``), and so is an INT8 that lost more than ``max_int8_drop``
    mAP50-95 against the FP32 (``check_int8_accuracy``)."""
    mlflow = settings.mlflow
    ref = ref or mlflow.production_alias
    record = get_model_record(mlflow.tracking_uri, mlflow.model_name, ref)
    fleet = fleet or settings.mqtt.fleet
    variant, variant_reason = choose_variant(record, variant)
    log.info(
        "model %s version %s: the %s ONNX (%s)",
        record.name,
        record.version,
        variant,
        variant_reason,
    )
    approval = check_release_approval(settings, record, fleet=fleet, variant=variant)
    if approval is not None:
        log.info(
            "model %s version %s: approval signed by %s (key %s, %s) at %s",
            record.name,
            record.version,
            approval.approver.name,
            approval.statement.key_id,
            approval.approver.path,
            approval.statement.approved_at.isoformat(),
        )
    signing_key = settings.release.signing_key
    private = load_private_key(signing_key) if signing_key else None
    if private is None:
        log.warning(
            "release.signing_key is not set: this release is unsigned, and devices take it "
            "only with release.insecure_unsigned = true (`qcloop keys generate` makes a key)"
        )
    _, sha256, _ = variant_of(record, variant)
    if variant == "int8":
        check_int8_accuracy(record, max_int8_drop)
    with tempfile.TemporaryDirectory(prefix="qcloop-release-") as tmp:
        data = download_onnx(mlflow.tracking_uri, record, Path(tmp), variant).read_bytes()
    store = open_store(settings.store)
    key = model_key(record.name, record.version, variant)
    store.put_bytes(key, data, "application/octet-stream")
    now = utcnow()
    url, valid_for = model_location(settings, store, key)

    def make(sequence: int) -> ReleaseMessage:
        return ReleaseMessage(
            fleet=fleet,
            model=ModelRef(name=record.name, version=record.version),
            sha256=sha256,
            size=len(data),
            variant=variant,
            variant_reason=variant_reason,
            url=url,
            input_size=record.input_size,
            class_names=record.class_names,
            thresholds=scoring_thresholds(thresholds),
            released_at=now,
            released_by=released_by,
            sequence=sequence,
            expires_at=now + valid_for,
            approval=approval.payload if approval is not None else None,
        )

    return claim_sequence(settings, store, fleet, make, private)


def publish_release(settings: Settings, release: SealedRelease) -> str:
    """Publish ``release``'s envelope retained on its fleet's release topic; the topic.

    The envelope is also kept in the object store (``released_key``), where the
    platform side finds the model in production (model-assisted labelling).
    """
    message, payload = release.message, release.payload()
    topic = release_topic(message.fleet)
    publish_retained(settings.mqtt, topic, payload)
    store = open_store(settings.store)
    store.put_bytes(released_key(message.model.name), payload, "application/json")
    store.put_bytes(fleet_key(message.fleet), payload, "application/json")
    return topic


def renewal_due(release: SealedRelease) -> bool:
    """Whether ``release`` is past half its validity: time to publish it anew."""
    message = release.message
    return utcnow() >= message.released_at + (message.expires_at - message.released_at) / 2


def watch_and_release(
    settings: Settings,
    *,
    interval_s: float = 30.0,
    released_by: str = "qcloop-release-bridge",
    thresholds: Thresholds | None = None,
    fleet: str | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
    variant: str = "auto",
    max_int8_drop: float = MAX_INT8_DROP,
) -> None:
    """The release bridge as a service: publish whenever the production alias moves.

    Polls MLflow every ``interval_s``; a new (approved) version behind the alias is
    copied and published once, and published anew (next sequence) when half its
    validity is gone. A version whose approval does not hold (``build_release``) is
    not published: the reason is logged once, and checked again at every poll (an
    approver may sign it yet). MLflow, store or broker failures are logged and retried
    at the next poll, so the bridge outlives outages. Returns when ``stop`` is set.
    """
    from components.rollout import advance_rollout, deliver, held_back

    stop = stop or threading.Event()
    alias = settings.mlflow.production_alias
    canary = bool(settings.release.canary_devices)  # staged rollouts: components.rollout
    fleet_name = fleet or settings.mqtt.fleet
    published: SealedRelease | None = None
    refused = ""  # the last refusal said, so that a version refused stays one line
    log(f"[bridge] watching {settings.mlflow.model_name}@{alias} every {interval_s:g} s")
    while not stop.is_set():
        try:
            if canary:  # one step of a rollout with its canaries, if one is on
                advance_rollout(settings, fleet_name, say=log)
            record = get_model_record(
                settings.mlflow.tracking_uri, settings.mlflow.model_name, alias
            )
            current = published.message.model.version if published else None
            due = record.version != current or (published is not None and renewal_due(published))
            held = held_back(settings, fleet_name, record.version) if due and canary else None
            if held is not None and held != refused:
                refused = held
                log(f"[bridge] {held}")
            if due and held is None:
                release = build_release(
                    settings,
                    ref=record.version,
                    released_by=released_by,
                    thresholds=thresholds,
                    fleet=fleet,
                    variant=variant,
                    max_int8_drop=max_int8_drop,
                )
                topic = deliver(settings, release, canary=canary)
                published = release
                sequence = release.message.sequence
                log(f"[bridge] released {record.name}/{record.version} on {topic} (#{sequence})")
                refused = ""
        except ApprovalRefused as exc:  # nothing copied or published; said once, checked anew
            if str(exc) != refused:
                refused = str(exc)
                log(f"[bridge] refused {settings.mlflow.model_name}@{alias}: {exc}")
        except QcloopError as exc:
            log(f"[bridge] not released this round: {exc}")
        stop.wait(interval_s)

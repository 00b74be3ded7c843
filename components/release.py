"""Release bridge: an approved MLflow model version -> a retained release message on MQTT.

The ONNX is copied from MLflow into the object store under
``models/<name>/<version>/model.onnx`` (where devices can fetch it without
MLflow credentials), its sha256 is checked, and a ``ReleaseMessage`` naming it
is published retained on ``qcloop/fleets/<fleet>/release``.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from components.registry import download_onnx, get_model_record, variant_of
from qcloop.contracts import ModelRecord, ModelRef, ReleaseMessage, Thresholds
from qcloop.errors import QcloopError, RegistryError
from qcloop.mqtt import publish_retained, release_topic
from qcloop.settings import Settings
from qcloop.signing import load_private_key, sign_release
from qcloop.storage import open_store, released_key

MAX_INT8_DROP = 0.02  # mAP50-95 an INT8 variant may lose against its FP32 before it ships


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


def model_key(name: str, version: str, variant: str = "fp32") -> str:
    """Object-store key of a released ONNX."""
    return f"models/{name}/{version}/model{'' if variant == 'fp32' else '-' + variant}.onnx"


def build_release(
    settings: Settings,
    *,
    ref: str | None = None,
    released_by: str,
    thresholds: Thresholds | None = None,
    fleet: str | None = None,
    variant: str = "fp32",
    max_int8_drop: float = MAX_INT8_DROP,
) -> ReleaseMessage:
    """Copy the approved model's ONNX (``variant`` fp32 or int8) into the object store;
    return its release message. An INT8 that lost more than ``max_int8_drop``
    mAP50-95 against the FP32 is refused (``check_int8_accuracy``)."""
    mlflow = settings.mlflow
    ref = ref or mlflow.production_alias
    record = get_model_record(mlflow.tracking_uri, mlflow.model_name, ref)
    if not record.approved:
        raise RegistryError(
            f"model {record.name} version {record.version} is not approved; "
            f"run `qcloop model approve {record.version}` first"
        )
    _, sha256, _ = variant_of(record, variant)
    if variant == "int8":
        check_int8_accuracy(record, max_int8_drop)
    with tempfile.TemporaryDirectory(prefix="qcloop-release-") as tmp:
        data = download_onnx(mlflow.tracking_uri, record, Path(tmp), variant).read_bytes()
    store = open_store(settings.store)
    key = model_key(record.name, record.version, variant)
    store.put_bytes(key, data, "application/octet-stream")
    message = ReleaseMessage(
        fleet=fleet or settings.mqtt.fleet,
        model=ModelRef(name=record.name, version=record.version),
        sha256=sha256,
        size=len(data),
        variant=variant,
        url=store.url(key),
        input_size=record.input_size,
        class_names=record.class_names,
        thresholds=thresholds or Thresholds(),
        released_by=released_by,
    )
    if settings.release.signing_key:
        message = sign_release(message, load_private_key(settings.release.signing_key))
    return message


def publish_release(settings: Settings, message: ReleaseMessage) -> str:
    """Publish ``message`` retained on its fleet's release topic; return the topic.

    The message is also kept in the object store (``released_key``), where the
    platform side finds the model in production (model-assisted labelling).
    """
    topic = release_topic(message.fleet)
    publish_retained(settings.mqtt, topic, message.to_json().encode())
    store = open_store(settings.store)
    store.put_bytes(
        released_key(message.model.name), message.to_json().encode(), "application/json"
    )
    return topic


def watch_and_release(
    settings: Settings,
    *,
    interval_s: float = 30.0,
    released_by: str = "qcloop-release-bridge",
    thresholds: Thresholds | None = None,
    fleet: str | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
    variant: str = "fp32",
    max_int8_drop: float = MAX_INT8_DROP,
) -> None:
    """The release bridge as a service: publish whenever the production alias moves.

    Polls MLflow every ``interval_s``; a new (approved) version behind the alias is
    copied and published once. MLflow, store or broker failures are logged and
    retried at the next poll, so the bridge outlives outages. Returns when ``stop``
    is set.
    """
    stop = stop or threading.Event()
    alias = settings.mlflow.production_alias
    published: str | None = None
    log(f"[bridge] watching {settings.mlflow.model_name}@{alias} every {interval_s:g} s")
    while not stop.is_set():
        try:
            record = get_model_record(
                settings.mlflow.tracking_uri, settings.mlflow.model_name, alias
            )
            if record.version != published:
                message = build_release(
                    settings,
                    ref=record.version,
                    released_by=released_by,
                    thresholds=thresholds,
                    fleet=fleet,
                    variant=variant,
                    max_int8_drop=max_int8_drop,
                )
                topic = publish_release(settings, message)
                published = record.version
                log(f"[bridge] released {record.name}/{record.version} on {topic}")
        except QcloopError as exc:
            log(f"[bridge] not released this round: {exc}")
        stop.wait(interval_s)

"""Release bridge: approved MLflow version -> ONNX in the object store -> retained MQTT message."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.audit import approve
from components.registry import register_model
from components.release import build_release, model_key, publish_release
from qcloop.contracts import EvalMetrics, ModelRecord, ReleaseMessage, Thresholds
from qcloop.errors import IntegrityError, RegistryError
from qcloop.mqtt import release_topic
from qcloop.settings import (
    MlflowSettings,
    MqttSettings,
    ReleaseSettings,
    Settings,
    StoreSettings,
)
from qcloop.storage import S3Store, download_url, open_store, sha256_file
from tests.conftest import read_retained

pytestmark = pytest.mark.integration


def _settings(
    tmp_path: Path, mqtt_url: str, store: StoreSettings | None = None, fleet: str = "line-1"
) -> Settings:
    return Settings(
        home=tmp_path,
        store=store or StoreSettings(path=tmp_path / "store"),
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", model_name="det"),
        mqtt=MqttSettings(url=mqtt_url, fleet=fleet),
    )


def _register(settings: Settings, onnx: Path) -> ModelRecord:
    return register_model(
        tracking_uri=settings.mlflow.tracking_uri,
        experiment="rel",
        model_name=settings.mlflow.model_name,
        onnx_path=onnx,
        metrics=EvalMetrics(map50=0.5, map50_95=0.3, precision=0.5, recall=0.5, images=4),
        params={"epochs": 1},
        dataset_version="v1",
        code_version="test",
        class_names=["scratch"],
        input_size=160,
    )


def test_unapproved_model_is_not_released(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    settings = _settings(tmp_path, mqtt_url)
    record = _register(settings, exported_onnx)
    with pytest.raises(RegistryError, match="alias @production: not found"):
        build_release(settings, released_by="t")
    with pytest.raises(RegistryError, match=f"version {record.version} is not approved"):
        build_release(settings, ref=record.version, released_by="t")


def test_approved_model_is_released_retained(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    # given an approved model
    settings = _settings(tmp_path, mqtt_url)
    record = _register(settings, exported_onnx)
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=record.version,
        approved_by="qa-lead",
    )
    # when the bridge releases it
    message = build_release(settings, released_by="ops", thresholds=Thresholds(confidence=0.3))
    topic = publish_release(settings, message)
    # then a late subscriber gets the retained message, and its bytes check out
    assert topic == release_topic("line-1")
    got = ReleaseMessage.from_json(read_retained(settings.mqtt, topic))
    assert got == message
    assert (got.model.version, got.input_size, got.class_names) == (
        record.version,
        160,
        ["scratch"],
    )
    fetched = download_url(got.url, tmp_path / "fetched.onnx", open_store(settings.store))
    assert sha256_file(fetched) == got.sha256 == sha256_file(exported_onnx)
    assert got.size == exported_onnx.stat().st_size


def test_release_through_s3(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path, s3_store_settings: StoreSettings
) -> None:
    settings = _settings(tmp_path, mqtt_url, s3_store_settings)
    record = _register(settings, exported_onnx)
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=record.version,
        approved_by="qa-lead",
    )
    message = build_release(settings, released_by="ops")
    assert message.url == f"s3://{s3_store_settings.bucket}/{model_key('det', record.version)}"
    store = S3Store(s3_store_settings)
    assert store.get_bytes(model_key("det", record.version)) == exported_onnx.read_bytes()


def test_signed_release_verifies_and_tampering_is_caught(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    from qcloop.signing import generate_keypair, load_public_key, verify_release

    private, public = generate_keypair(tmp_path / "keys")
    settings = _settings(tmp_path, mqtt_url).model_copy(
        update={"release": ReleaseSettings(signing_key=private)}
    )
    record = _register(settings, exported_onnx)
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=record.version,
        approved_by="qa-lead",
    )
    message = build_release(settings, released_by="ops")
    verify_release(message, load_public_key(public))
    forged = message.model_copy(update={"url": "http://evil.example/model.onnx"})
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_release(forged, load_public_key(public))
    with pytest.raises(IntegrityError, match="unsigned"):
        verify_release(message.model_copy(update={"signature": None}), load_public_key(public))


def test_bridge_publishes_each_alias_move_once(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    import threading
    import time

    from components.release import watch_and_release

    settings = _settings(tmp_path, mqtt_url, fleet="bridge-test")  # own retained topic
    lines: list[str] = []
    stop = threading.Event()
    bridge = threading.Thread(
        target=watch_and_release,
        kwargs={"settings": settings, "interval_s": 0.2, "stop": stop, "log": lines.append},
    )
    bridge.start()
    try:
        first = _register(settings, exported_onnx)
        second = _register(settings, exported_onnx)
        for record in (first, second):
            approve(
                tracking_uri=settings.mlflow.tracking_uri,
                model_name="det",
                version=record.version,
                approved_by="qa-lead",
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                got = ReleaseMessage.from_json(
                    read_retained(settings.mqtt, release_topic("bridge-test"))
                )
                if got.model.version == record.version:
                    break
                time.sleep(0.2)
            assert got.model.version == record.version
    finally:
        stop.set()
        bridge.join(timeout=10)
    released = [line for line in lines if line.startswith("[bridge] released")]
    assert len(released) == 2, lines
    assert any("not released this round" in line for line in lines)  # before the first approval

"""Presigned model URLs (release.presigned_urls): a device downloads the released model over
plain http(s) without any store credentials, still capped at the signed size and hashed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from components.audit import approve
from components.registry import register_model
from components.release import PRESIGN_MAX, build_release, model_key, presigned_url
from edge_agent.fetch import fetch_model
from edge_agent.store import LazyStore
from qcloop.contracts import EvalMetrics
from qcloop.download import download_url
from qcloop.errors import ConfigError, IntegrityError, StoreUnavailable
from qcloop.settings import MlflowSettings, MqttSettings, ReleaseSettings, Settings, StoreSettings
from qcloop.storage import sha256_file
from tests.edge_agent.edge_helpers import make_constant_model

pytestmark = pytest.mark.integration


def _released(tmp_path: Path, mqtt_url: str, store: StoreSettings, **release: object) -> Settings:
    """Settings of a bridge whose version 1 (a small real ONNX) is approved."""
    settings = Settings(
        home=tmp_path,
        store=store,
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", model_name="det"),
        mqtt=MqttSettings(url=mqtt_url, fleet="line-1"),
        release=ReleaseSettings.model_validate(release),
    )
    onnx = make_constant_model(tmp_path / "model.onnx", np.full((1, 5, 10), 0.001))
    record = register_model(
        tracking_uri=settings.mlflow.tracking_uri,
        experiment="rel",
        model_name="det",
        onnx_path=onnx,
        metrics=EvalMetrics(map50=0.5, map50_95=0.3, precision=0.5, recall=0.5, images=4),
        params={"epochs": 1},
        dataset_version="v1",
        code_version="test",
        class_names=["scratch"],
        input_size=320,
    )
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=record.version,
        approved_by="qa-lead",
    )
    return settings


def test_a_presigned_release_downloads_without_store_credentials(
    tmp_path: Path, mqtt_url: str, s3_store_settings: StoreSettings
) -> None:
    # given a bridge with presigned URLs on and a release expiring after 30 days
    settings = _released(tmp_path, mqtt_url, s3_store_settings, presigned_urls=True)
    # when it builds the release
    message = build_release(settings, released_by="ops").message
    # then the model is named by an http(s) URL signed for the store, as long as the release
    url = urlparse(message.url)
    assert f"{url.scheme}://{url.netloc}" == s3_store_settings.endpoint
    assert url.path == f"/{s3_store_settings.bucket}/{model_key('det', '1')}"
    query = parse_qs(url.query)
    assert query["X-Amz-Expires"] == [str(int(PRESIGN_MAX.total_seconds()))]
    assert message.expires_at - message.released_at == PRESIGN_MAX  # not 30 days
    # and a device with no store credentials at all fetches it: size capped, sha256 checked
    keyless = LazyStore(StoreSettings(kind="local", path=tmp_path / "no-store"))
    path = fetch_model(message, tmp_path / "device", keyless)
    assert sha256_file(path) == message.sha256
    # while the same object without the signature is refused by the store
    with pytest.raises(StoreUnavailable, match="403"):
        download_url(message.url.split("?")[0], tmp_path / "anonymous.onnx")
    # and a release that signs another size or hash is refused as from s3://
    with pytest.raises(IntegrityError):
        download_url(message.url, tmp_path / "x.onnx", size=message.size - 1)


def test_presigned_urls_are_signed_for_the_host_the_devices_reach_and_need_s3(
    s3_store_settings: StoreSettings, tmp_path: Path
) -> None:
    # given a store the bridge reaches in-cluster, and devices outside that reach it elsewhere
    public = "https://minio.plant.example"
    # when a URL is made for the devices, valid for longer than S3 allows
    url = presigned_url(s3_store_settings, "models/det/1/model.onnx", timedelta(days=30), public)
    # then it names the public host and lives 7 days at most
    assert url.startswith(f"{public}/{s3_store_settings.bucket}/models/det/1/model.onnx?")
    assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == ["604800"]
    # and a bridge on a local store cannot presign
    with pytest.raises(ConfigError, match="S3 store"):
        presigned_url(StoreSettings(path=tmp_path), "models/x.onnx", timedelta(hours=1))


def test_a_halted_rollout_gives_the_canaries_the_old_model_by_a_url_signed_anew(
    tmp_path: Path, mqtt_url: str, s3_store_settings: StoreSettings
) -> None:
    from components.rollout import advance_rollout, deliver
    from qcloop.mqtt import device_release_topic
    from tests.components.test_release import _settings
    from tests.components.test_rollout import _heartbeat, _on, _two_versions

    # given presigned URLs, a fleet on v1 (#1) and v2 (#2) out to one canary
    settings = _settings(tmp_path, mqtt_url, s3_store_settings, fleet="presigned-roll")
    release = ReleaseSettings(presigned_urls=True, canary_devices=["pre-a"], canary_wait_s=60.0)
    settings = settings.model_copy(update={"release": release})
    onnx = make_constant_model(tmp_path / "model.onnx", np.full((1, 5, 10), 0.001))
    v1, v2 = _two_versions(settings, onnx)
    _heartbeat(settings, "pre-a", v1)
    deliver(settings, build_release(settings, ref=v2, released_by="ops"))
    # when the canary rejects v2 and the rollout halts
    rejected = f"det {v2} (0123456789ab) at 2026-01-01T00:00:00+00:00: crashed on frame 1"
    _heartbeat(settings, "pre-a", v1, models_rejected=1, model_last_rejected=rejected)
    rollout = advance_rollout(settings, say=lambda _: None)
    assert rollout is not None and rollout.stage == "halted"
    # then the canary's rollback names v1 by a URL signed now, valid as long as the release
    back = _on(settings, device_release_topic("pre-a"))
    assert back is not None and (back.model.version, back.sequence) == (v1, 3)
    query = parse_qs(urlparse(back.url).query)
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(signed_at - back.released_at) < timedelta(seconds=5)
    assert query["X-Amz-Expires"] == [str(int(PRESIGN_MAX.total_seconds()))]
    assert back.expires_at - back.released_at == PRESIGN_MAX
    # and the canary fetches it with no store credentials
    keyless = LazyStore(StoreSettings(kind="local", path=tmp_path / "no-store"))
    assert sha256_file(fetch_model(back, tmp_path / "device", keyless)) == back.sha256

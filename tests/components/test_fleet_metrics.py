"""The release bridge's metrics: the fleet's releases (object store) and its devices (their
retained heartbeats on a real mosquitto), scraped over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from components.fleet_metrics import serve_fleet_metrics
from components.release import claim_sequence, publish_release
from qcloop.contracts import ModelRef, ReleaseMessage, utcnow
from qcloop.mqtt import publish_retained, state_topic
from qcloop.settings import MqttSettings, Settings, StoreSettings
from qcloop.signing import SealedRelease
from qcloop.storage import open_store
from tests.edge_agent.edge_helpers import wait_until
from tests.metrics_helpers import labels_of, scrape, value
from tests.services import free_port

pytestmark = pytest.mark.integration

FLEET = "metrics-line"
ROOT = Path(__file__).resolve().parents[2]


def _release(settings: Settings, version: str) -> SealedRelease:
    """Claim the fleet's next sequence for ``version``, as the bridge does (unsigned)."""
    now = utcnow()

    def make(sequence: int) -> ReleaseMessage:
        return ReleaseMessage(
            fleet=FLEET,
            model=ModelRef(name="det", version=version),
            sha256="ab" * 32,
            size=1,
            url=f"file:///models/det/{version}/model.onnx",
            input_size=320,
            class_names=["scratch"],
            released_by="tests",
            sequence=sequence,
            released_at=now,
            expires_at=now + timedelta(days=30),
        )

    return claim_sequence(settings, open_store(settings.store), FLEET, make, None)


def _heartbeat(settings: Settings, device: str, fleet: str = FLEET, **fields: Any) -> None:
    state = {"status": "serving", "device_id": device, "fleet": fleet, **fields}
    publish_retained(settings.mqtt, state_topic(device), json.dumps(state).encode())


def test_the_bridge_exports_releases_fleet_size_and_devices_by_model(
    tmp_path: Path, mqtt_url: str
) -> None:
    # given a fleet whose topic holds v2 (its second release), after v1
    settings = Settings(
        home=tmp_path,
        store=StoreSettings(path=tmp_path / "store"),
        mqtt=MqttSettings(url=mqtt_url, fleet=FLEET),
    )
    publish_release(settings, _release(settings, "1"))
    v2 = _release(settings, "2")
    publish_release(settings, v2)
    # and three devices: on v2, behind on v1 with a spool, offline; one of another fleet
    det = {"name": "det", "version": "2"}
    _heartbeat(settings, "fm-a", model=det, frames=40)
    _heartbeat(
        settings,
        "fm-b",
        model={"name": "det", "version": "1"},
        spool_depth=7,
        spool_bytes=70_000,
        models_rejected=1,
        feedback_policies={"band": {"sent": 4, "limited": 1, "deduplicated": 0}},
        model_on_trial_since=utcnow().isoformat(),
    )
    _heartbeat(settings, "fm-c", status="offline")
    _heartbeat(settings, "fm-other", fleet="other-line", model=det)
    # when the bridge serves its metrics, reading every half second
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    exporter = serve_fleet_metrics(settings, FLEET, port=port, interval_s=0.5)
    try:
        wait_until(lambda: value(scrape(url), "qcloop_fleet_devices", status="serving") == 2)
        first = scrape(url)
        # then releases published and the release on the fleet's topic
        assert value(first, "qcloop_fleet_releases_published_total", fleet=FLEET) == 2
        assert labels_of(first, "qcloop_fleet_release_info") == [
            {"fleet": FLEET, "model": "det", "version": "2", "variant": "fp32", "sequence": "2"}
        ]
        assert value(first, "qcloop_fleet_release_version") == 2
        expiry = value(first, "qcloop_fleet_release_expiry_timestamp_seconds")
        assert expiry == v2.message.expires_at.timestamp()
        # and the fleet's size by status, devices by model version (the other fleet's not)
        assert value(first, "qcloop_fleet_devices", status="offline") == 1
        assert value(first, "qcloop_fleet_devices_by_model", version="2") == 1
        assert value(first, "qcloop_fleet_devices_by_model", version="1") == 1
        assert "fm-other" not in {ls.get("device") for ls in map(dict, (k[1] for k in first))}
        # and each device from its heartbeat
        assert value(first, "qcloop_fleet_device_model_version", device="fm-b") == 1
        assert value(first, "qcloop_fleet_device_spool_depth", device="fm-b") == 7
        assert value(first, "qcloop_fleet_device_spool_bytes", device="fm-b") == 70_000
        assert value(first, "qcloop_fleet_device_feedback_sent_total", device="fm-b") == 4
        assert value(first, "qcloop_fleet_device_models_rejected_total", device="fm-b") == 1
        assert value(first, "qcloop_fleet_device_on_trial", device="fm-b") == 1
        assert value(first, "qcloop_fleet_device_frames_total", device="fm-a") == 40
        assert value(first, "qcloop_fleet_device_up", device="fm-c") == 0
        seen = value(first, "qcloop_fleet_device_heartbeat_timestamp_seconds", device="fm-a")
        assert abs(seen - time.time()) < 60
        # when fm-b swaps to v2 and a third release is published
        _heartbeat(settings, "fm-b", model=det)
        publish_release(settings, _release(settings, "3"))
        wait_until(lambda: value(scrape(url), "qcloop_fleet_devices_by_model", version="2") == 2)
        wait_until(lambda: value(scrape(url), "qcloop_fleet_release_version") == 3)
        # then the counts move
        later = scrape(url)
        assert value(later, "qcloop_fleet_releases_published_total") == 3
        assert value(later, "qcloop_fleet_devices_by_model", version="1") == 0
        assert value(later, "qcloop_fleet_read_errors_total") == 0
    finally:
        exporter.close()
    with pytest.raises(urllib.error.URLError):
        scrape(url)


def test_release_watch_serves_the_metrics_beside_the_loop(tmp_path: Path, mqtt_url: str) -> None:
    # given a fleet with one device, and the bridge started as the chart starts it
    settings = Settings(
        home=tmp_path,
        store=StoreSettings(path=tmp_path / "store"),
        mqtt=MqttSettings(url=mqtt_url, fleet="watch-line"),
    )
    _heartbeat(settings, "fm-watch", fleet="watch-line")
    port = free_port()
    env = {
        **os.environ,
        "QCLOOP_HOME": str(tmp_path),
        "QCLOOP_STORE__PATH": str(tmp_path / "store"),
        "QCLOOP_MQTT__URL": mqtt_url,
        "QCLOOP_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    qcloop = str(Path(sys.executable).with_name("qcloop"))
    command = [qcloop, "release", "watch", "--fleet=watch-line", "--interval=0.5"]
    log = (tmp_path / "bridge.log").open("w")
    proc = subprocess.Popen(
        [*command, f"--metrics-port={port}"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        # then its /metrics shows the fleet, while the loop polls MLflow (no model there yet)
        url = f"http://127.0.0.1:{port}/metrics"

        def serving() -> float:
            try:
                return value(scrape(url), "qcloop_fleet_devices", status="serving")
            except urllib.error.URLError:
                return 0.0

        wait_until(lambda: serving() == 1, timeout=60, what="the bridge's metrics")
        assert proc.poll() is None, (tmp_path / "bridge.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()

"""Prometheus metrics of the release bridge: the fleet's releases and its devices.

``qcloop release watch --metrics-port 9843`` serves ``/metrics`` beside the watch loop.
Every ``interval_s`` it reads the fleet's release record in the object store
(``releases/<fleet>/``) and the devices' retained heartbeats (``qcloop.devices``), and
each scrape returns what the last read found: a scrape never waits on the broker or the
store. The metrics live in a registry of their own.

| metric (``qcloop_fleet_...``) | type | labels |
| --- | --- | --- |
| ``releases_published_total`` (the fleet's highest sequence) | counter | fleet |
| ``release_info`` (the release on the fleet's topic) | info | + model, version, variant, sequence |
| ``release_version``, ``release_expiry_timestamp_seconds`` | gauge | fleet |
| ``devices`` (the fleet's size by status) | gauge | fleet, status |
| ``devices_by_model`` | gauge | fleet, model, version |
| ``device_up``, ``device_heartbeat_timestamp_seconds`` | gauge | fleet, device |
| ``device_model_version``, ``device_on_trial``, ``DEVICE_GAUGES`` | gauge | fleet, device |
| ``device_feedback_sent_total``, ``DEVICE_COUNTERS`` | counter | fleet, device |
| ``read_timestamp_seconds``, ``read_errors_total`` | gauge, counter | fleet |

Model versions are MLflow's numbers; a version that is not a number has no
``*_version`` sample (``release_info`` and ``devices_by_model`` still name it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from components.release import latest_key
from components.rollout import fleet_release
from qcloop.contracts import ReleaseEnvelope, ReleaseMessage
from qcloop.devices import fleet_states
from qcloop.errors import ObjectNotFound
from qcloop.settings import Settings
from qcloop.signing import unverified
from qcloop.storage import open_store

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

PREFIX = "qcloop_fleet_"
# per device, from its heartbeat: metric <- DeviceState field, help
DEVICE_GAUGES = {
    "device_spool_depth": ("spool_depth", "Feedback images waiting for upload on the device"),
    "device_spool_bytes": ("spool_bytes", "Bytes of the device's spool"),
    "device_fps": ("fps", "Frames a second over the device's last heartbeat"),
}
DEVICE_COUNTERS = {
    "device_frames": ("frames", "Frames the device inferred since its agent started"),
    "device_models_rejected": ("models_rejected", "Models the device rejected (rolled back)"),
    "device_releases_refused": ("releases_refused", "Releases the device refused"),
    "device_upload_failures": ("upload_failures", "The device's failed uploads (retried)"),
    "device_errors": ("errors", "Every failure of the device"),
}
DOWN = frozenset({"offline", "cleared", "unreadable"})


def version_number(version: str | None) -> float | None:
    """An MLflow model version as a number (None if it is not one)."""
    return float(version) if version is not None and version.isdigit() else None


@dataclass(frozen=True)
class FleetReading:
    """What one read of the store and the broker found."""

    fleet: str
    published: int = 0  # the highest sequence recorded: releases published to the fleet
    release: ReleaseMessage | None = None  # the release on the fleet's topic
    devices: list[dict[str, Any]] = field(default_factory=list)  # read_state rows
    at: float = field(default_factory=time.time)


def read_fleet(settings: Settings, fleet: str) -> FleetReading:
    """The fleet's releases (object store) and its devices' heartbeats (broker)."""
    store = open_store(settings.store)
    try:
        latest = unverified(ReleaseEnvelope.from_json(store.get_bytes(latest_key(fleet))))
        published = latest.message.sequence
    except ObjectNotFound:
        published = 0
    sealed = fleet_release(settings, store, fleet)
    devices = fleet_states(settings.mqtt, fleet=fleet)
    return FleetReading(fleet, published, sealed.message if sealed else None, devices)


class FleetCollector:
    """A prometheus-client collector over the latest ``FleetReading``."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self._lock = threading.Lock()
        self._reading: FleetReading | None = None
        self._errors = 0

    def __repr__(self) -> str:
        return f"FleetCollector(fleet={self.fleet!r})"

    def update(self, reading: FleetReading | None) -> None:
        """Keep ``reading`` (None: the read failed, counted)."""
        with self._lock:
            if reading is None:
                self._errors += 1
            else:
                self._reading = reading

    def collect(self) -> Iterator[Metric]:
        """Every metric of the last reading."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            reading, errors = self._reading, self._errors
        failed = CounterMetricFamily(
            PREFIX + "read_errors", "Failed reads of the store or broker", labels=["fleet"]
        )
        failed.add_metric([self.fleet], errors)
        yield failed
        if reading is None:
            return
        read_at = GaugeMetricFamily(
            PREFIX + "read_timestamp_seconds", "When the bridge last read them", labels=["fleet"]
        )
        read_at.add_metric([self.fleet], reading.at)
        yield read_at
        yield from _release_metrics(reading)
        yield from _device_metrics(reading)


def _release_metrics(reading: FleetReading) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    fleet, release = [reading.fleet], reading.release
    published = CounterMetricFamily(
        PREFIX + "releases_published", "Releases published to the fleet", labels=["fleet"]
    )
    published.add_metric(fleet, reading.published)
    info = InfoMetricFamily(
        PREFIX + "release", "The release on the fleet's topic", labels=["fleet"]
    )
    version = GaugeMetricFamily(
        PREFIX + "release_version", "Model version of the fleet's release", labels=["fleet"]
    )
    expiry = GaugeMetricFamily(
        PREFIX + "release_expiry_timestamp_seconds", "When it expires", labels=["fleet"]
    )
    if release is not None:
        labels = {"model": release.model.name, "version": release.model.version}
        labels |= {"variant": release.variant, "sequence": str(release.sequence)}
        info.add_metric(fleet, labels)
        number = version_number(release.model.version)
        if number is not None:
            version.add_metric(fleet, number)
        expiry.add_metric(fleet, release.expires_at.timestamp())
    yield from (published, info, version, expiry)


def _device_metrics(reading: FleetReading) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    fleet, rows = reading.fleet, reading.devices
    size = GaugeMetricFamily(PREFIX + "devices", "Devices by status", labels=["fleet", "status"])
    for status, count in sorted(Counter(str(r["status"]) for r in rows).items()):
        size.add_metric([fleet, status], count)
    by_model = GaugeMetricFamily(
        PREFIX + "devices_by_model",
        "Devices by the model they serve (or last served)",
        labels=["fleet", "model", "version"],
    )
    models = Counter((r["model"]["name"], r["model"]["version"]) for r in rows if r.get("model"))
    for (name, version), count in sorted(models.items()):
        by_model.add_metric([fleet, name, version], count)
    yield from (size, by_model)
    ids = ["fleet", "device"]
    up = GaugeMetricFamily(PREFIX + "device_up", "1 unless offline or unreadable", labels=ids)
    seen = GaugeMetricFamily(
        PREFIX + "device_heartbeat_timestamp_seconds", "The device's last heartbeat", labels=ids
    )
    serving = GaugeMetricFamily(
        PREFIX + "device_model_version", "Model version the device serves", labels=ids
    )
    trial = GaugeMetricFamily(PREFIX + "device_on_trial", "1 while on trial", labels=ids)
    sent = CounterMetricFamily(
        PREFIX + "device_feedback_sent", "Frames the device's policies sent back", labels=ids
    )
    gauges = {
        n: GaugeMetricFamily(PREFIX + n, h, labels=ids) for n, (_, h) in DEVICE_GAUGES.items()
    }
    counters = {
        n: CounterMetricFamily(PREFIX + n, h, labels=ids) for n, (_, h) in DEVICE_COUNTERS.items()
    }
    for row in rows:
        key = [fleet, row["device_id"]]
        up.add_metric(key, 0 if row["status"] in DOWN else 1)
        if "updated_at" not in row:
            continue  # cleared or unreadable: nothing more is known
        seen.add_metric(key, datetime.fromisoformat(row["updated_at"]).timestamp())
        number = version_number(row["model"]["version"]) if row.get("model") else None
        if number is not None:
            serving.add_metric(key, number)
        trial.add_metric(key, 1 if row.get("model_on_trial_since") else 0)
        policies = row.get("feedback_policies", {})
        sent.add_metric(key, sum(p.get("sent", 0) for p in policies.values()))
        for name, (source, _) in DEVICE_GAUGES.items():
            gauges[name].add_metric(key, row.get(source) or 0)
        for name, (source, _) in DEVICE_COUNTERS.items():
            counters[name].add_metric(key, row.get(source) or 0)
    yield from (up, seen, serving, trial, sent, *gauges.values(), *counters.values())


class FleetExporter:
    """``/metrics`` of the bridge and the thread that reads the fleet every ``interval_s``."""

    def __init__(
        self, settings: Settings, fleet: str, server: WSGIServer, collector: FleetCollector
    ) -> None:
        self._settings = settings
        self._server = server
        self.collector = collector
        self.fleet = fleet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"FleetExporter(fleet={self.fleet!r})"

    def refresh(self) -> None:
        """Read the fleet now (failures are logged and counted)."""
        try:
            reading: FleetReading | None = read_fleet(self._settings, self.fleet)
        except Exception as exc:  # broker, store, a payload: counted, read again next time
            log.warning(
                "fleet not read for metrics", extra={"fleet": self.fleet, "error": str(exc)}
            )
            reading = None
        self.collector.update(reading)

    def start(self, interval_s: float) -> None:
        """Read now, then every ``interval_s`` in a background thread."""

        def loop() -> None:
            while not self._stop.is_set():
                self.refresh()
                self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="qcloop-fleet-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading and serving."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)


def serve_fleet_metrics(
    settings: Settings, fleet: str, *, port: int, host: str = "127.0.0.1", interval_s: float = 30.0
) -> FleetExporter:
    """Serve ``fleet``'s metrics on ``http://host:port/metrics``, read every ``interval_s``."""
    from prometheus_client import CollectorRegistry, start_http_server

    collector = FleetCollector(fleet)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, host, registry)
    exporter = FleetExporter(settings, fleet, server, collector)
    exporter.start(interval_s)
    log.info("fleet metrics served", extra={"url": f"http://{host}:{port}/metrics"})
    return exporter

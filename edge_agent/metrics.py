"""Prometheus metrics of the edge agent, read from what the agent already keeps.

Off by default; with ``[metrics] enabled = true`` the agent serves
``http://<host>:<port>/metrics`` (``host`` 127.0.0.1 unless set: this box only). Each
scrape reads the agent's counters (``edge_agent.stats``), its latency histogram, the
spool, the serving model and the MQTT link as they are now: nothing is counted twice,
and a scrape never waits on the inspection loop. The metrics live in a registry of
their own (not prometheus-client's global one) and carry the ``device`` and ``fleet``
labels, so a Prometheus that gathers many boxes tells them apart.

prometheus-client is imported only when metrics are on: a box without it runs with
them off. With them on and the package missing, or the port taken, the agent logs an
error and inspects on without metrics.

| metric | type | extra labels |
| --- | --- | --- |
| ``qcloop_edge_frames_total`` | counter | |
| ``qcloop_edge_inference_latency_seconds`` | histogram | |
| ``qcloop_edge_feedback_images_total`` (spooled for the raw store) | counter | ``reason`` |
| ``qcloop_edge_feedback_policy_total`` | counter | ``policy``, ``outcome`` |
| ``qcloop_edge_spool_depth``, ``qcloop_edge_spool_bytes`` | gauge | |
| ``qcloop_edge_uploads_total``, ``qcloop_edge_upload_failures_total`` | counter | |
| ``qcloop_edge_model_info`` (while a model serves) | info | model, version, variant, sha256 |
| ``qcloop_edge_model_on_trial``, ``qcloop_edge_release_sequence`` | gauge | |
| ``qcloop_edge_swaps_total``, ``qcloop_edge_rollbacks_total`` | counter | |
| ``qcloop_edge_mqtt_connected`` (1 or 0) | gauge | |

and the other counters of ``AgentStats`` (``COUNTER_METRICS``), ``qcloop_edge_disk_free_bytes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from edge_agent.health import Health
from edge_agent.stats import disk_free

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

    from edge_agent.release import ServingModel

log = logging.getLogger(__name__)

PREFIX = "qcloop_edge_"
LABELS = ["device", "fleet"]
# exported counter (``<PREFIX><name>_total``) <- agent counter, help
COUNTER_METRICS: dict[str, tuple[str, str]] = {
    "frames": ("frames_inferred", "Frames inferred"),
    "frames_rejected": ("frames_rejected", "Frames set aside: not an image, too large, empty"),
    "uploads": ("feedback_images", "Feedback images uploaded to the raw store"),
    "upload_failures": ("upload_failures", "Failed uploads to the store (retried)"),
    "feedback_dropped": ("feedback_dropped", "Feedback images dropped: spool full"),
    "swaps": ("swaps", "Models switched to (the first release counts)"),
    "rollbacks": ("rollbacks", "Back to the previous model after failures"),
    "models_rejected": ("models_rejected", "Models never to be loaded again"),
    "releases_refused": ("releases_refused", "Invalid, untrusted or broken releases"),
    "mqtt_dropped": ("mqtt_dropped", "MQTT messages dropped: queue full"),
    "verdicts_unknown_frame": ("verdicts_unknown_frame", "Verdicts on a frame not kept"),
    "verdicts_ignored": ("verdicts_ignored", "Malformed or oversized verdicts"),
    "errors": ("errors", "Every failure, all kinds together"),
}
# agent counters exported otherwise: by reason (qcloop_edge_feedback_images_total)
BY_REASON = frozenset({"feedback_spooled", "verdicts_sent"})

ServingNow = Callable[[], "ServingModel | None"]


class Link(Protocol):
    """What the exporter reads of the MQTT link (``edge_agent.link.MqttLink``)."""

    @property
    def connected(self) -> bool: ...


class EdgeCollector:
    """A prometheus-client collector: the agent's metrics, read at each scrape."""

    def __init__(self, health: Health, serving: ServingNow, link: Link) -> None:
        self._health = health
        self._serving = serving
        self._link = link
        self._ids = [health.config.device_id, health.config.fleet]

    def __repr__(self) -> str:
        return f"EdgeCollector(device_id={self._ids[0]!r})"

    def collect(self) -> Iterator[Metric]:
        """Every metric, as it is now."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        counters = self._health.counters
        values = counters.values()
        for name, (key, text) in COUNTER_METRICS.items():
            yield self._one(CounterMetricFamily(PREFIX + name, text, labels=LABELS), values[key])
        reasons = {**counters.reasons(), "operator_verdict": values["verdicts_sent"]}
        yield self._many(
            CounterMetricFamily(
                PREFIX + "feedback_images",
                "Feedback images written to the spool for the raw store, by sidecar reason",
                labels=[*LABELS, "reason"],
            ),
            {(reason,): count for reason, count in reasons.items()},
        )
        outcomes = self._health.policies.counts()
        yield self._many(
            CounterMetricFamily(
                PREFIX + "feedback_policy",
                "Frames a feedback policy matched: sent, limited or deduplicated",
                labels=[*LABELS, "policy", "outcome"],
            ),
            {(p, o): n for p, counts in outcomes.items() for o, n in counts.items()},
        )
        buckets, total = self._health.throughput.histogram.read()
        latency = HistogramMetricFamily(
            PREFIX + "inference_latency_seconds",
            "The model's part of a frame: letterbox if not done ahead, model run, NMS",
            labels=LABELS,
        )
        latency.add_metric(self._ids, buckets, total)
        yield latency
        yield from self._gauges()
        yield from self._model()

    def _gauges(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        spool, config = self._health.spool, self._health.config
        gauges = {
            "spool_depth": ("Feedback images waiting for upload", spool.depth() if spool else 0),
            "spool_bytes": ("Bytes of the spool", spool.size() if spool else 0),
            "mqtt_connected": ("1 while the MQTT broker is connected", int(self._link.connected)),
        }
        free = disk_free(config.state_dir)
        if free is not None:
            gauges["disk_free_bytes"] = ("Free space of the state dir", free)
        for name, (text, value) in gauges.items():
            yield self._one(GaugeMetricFamily(PREFIX + name, text, labels=LABELS), value)

    def _model(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        serving, trial = self._serving(), self._health.trial
        info = InfoMetricFamily(PREFIX + "model", "The model serving now", labels=LABELS)
        on_trial = GaugeMetricFamily(
            PREFIX + "model_on_trial", "1 while the serving model is on trial", labels=LABELS
        )
        sequence = GaugeMetricFamily(
            PREFIX + "release_sequence",
            "Sequence of the release serving now (0: a model given on the command line)",
            labels=LABELS,
        )
        if serving is not None:
            release = serving.release
            info.add_metric(
                self._ids,
                {
                    "model": serving.ref.name,
                    "version": serving.ref.version,
                    "variant": release.variant if release else "",
                    "sha256": serving.sha256,
                },
            )
            on_trial.add_metric(self._ids, int(trial is not None and trial.since is not None))
            sequence.add_metric(self._ids, release.sequence if release else 0)
        yield from (info, on_trial, sequence)

    def _one(self, family: CounterMetricFamily | GaugeMetricFamily, value: float) -> Metric:
        family.add_metric(self._ids, value)
        return family

    def _many(self, family: CounterMetricFamily, values: dict[tuple[str, ...], int]) -> Metric:
        for extra, value in sorted(values.items()):
            family.add_metric([*self._ids, *extra], value)
        return family


class Exporter:
    """The metrics server of one agent run (none when off or it could not start)."""

    def __init__(self, server: WSGIServer | None = None, url: str | None = None) -> None:
        self._server = server
        self.url = url

    def __repr__(self) -> str:
        return f"Exporter(url={self.url!r})"

    def close(self) -> None:
        """Stop serving (the port is free again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve_metrics(health: Health, serving: ServingNow, link: Link) -> Exporter:
    """Serve the agent's metrics if ``[metrics]`` says so; errors are logged, never raised."""
    settings = health.config.metrics
    if not settings.enabled:
        return Exporter()
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        log.error(
            "metrics.enabled, but prometheus-client is not installed: no metrics served "
            "(pip install -c constraints.txt '.[edge]')"
        )
        return Exporter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgeCollector(health, serving, link))
    url = f"http://{settings.host}:{settings.port}/metrics"
    try:
        server, _thread = start_http_server(settings.port, settings.host, registry)
    except OSError as exc:
        log.error("metrics not served: cannot listen", extra={"url": url, "error": str(exc)})
        return Exporter()
    log.info("metrics served", extra={"url": url})
    return Exporter(server, url)

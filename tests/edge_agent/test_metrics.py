"""The agent's Prometheus metrics: scraped over HTTP from the real agent while frames,
feedback, uploads, a swap and a rollback happen (real mosquitto, real S3 endpoint)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import EdgeConfig
from edge_agent.link import publish_verdict
from edge_agent.metrics import BY_REASON, COUNTER_METRICS
from edge_agent.stats import COUNTERS, AgentStats, LatencyHistogram
from qcloop.contracts import InferenceResult
from qcloop.mqtt import results_topic
from tests.edge_agent.conftest import MotoProcess
from tests.edge_agent.edge_helpers import (
    Listener,
    make_config,
    make_constant_model,
    make_flaky_model,
    publish,
    release_for,
    wait_until,
    write_toml,
)
from tests.metrics_helpers import labels_of, scrape, value
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def constant(tmp_path: Path, n: int) -> Path:
    return make_constant_model(tmp_path / f"v{n}.onnx", np.full((1, 84, 10), n / 1e4))


# ------------------------------------------------------------------ the running agent


@pytest.mark.integration
def test_a_scrape_finds_every_metric_moving_as_frames_feedback_and_swaps_happen(
    mqtt_url: str, own_s3: MotoProcess, tmp_path: Path
) -> None:
    # given an agent with metrics on, the simulated camera, an object store that is down,
    # and v1 released (a constant model: every frame is unsure, so every frame goes back)
    port = free_port()
    config = make_config(
        tmp_path,
        mqtt_url,
        own_s3.settings("raw-metrics"),
        "cam-metrics",
        source={"kind": "simulated", "interval_s": 0.1},
        feedback={"backoff_initial_s": 0.1, "backoff_max_s": 0.2, "store_timeout_s": 2.0},
        metrics={"enabled": True, "port": port},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    v1 = release_for(constant(tmp_path, 1), config.fleet, version="1")
    publish(mqtt_url, config.fleet, v1)
    results = Listener(mqtt_url, results_topic(config.device_id))
    agent = Agent(config)
    out: list[AgentStats] = []
    thread = threading.Thread(target=lambda: out.append(agent.run(timeout_s=60)), daemon=True)
    thread.start()
    try:
        # when frames are inferred on v1 while the store is down
        wait_until(lambda: agent.stats().frames_inferred >= 5, what="five frames on v1")
        wait_until(lambda: value(scrape(url), "qcloop_edge_spool_depth") >= 5, what="spooled")
        wait_until(lambda: agent.stats().upload_failures >= 1, what="a failed upload")
        first = scrape(url)
        # then the scrape names the device, the model serving and what happened so far
        ids = {"device": "cam-metrics", "fleet": config.fleet}
        assert labels_of(first, "qcloop_edge_model_info") == [
            {**ids, "model": "scratch-detector", "version": "1", "variant": "fp32",
             "sha256": v1.sha256}
        ]  # fmt: skip
        assert value(first, "qcloop_edge_release_sequence") == 1
        assert value(first, "qcloop_edge_model_on_trial") == 0  # good after two frames
        assert value(first, "qcloop_edge_swaps_total", **ids) == 1
        assert value(first, "qcloop_edge_mqtt_connected") == 1
        assert value(first, "qcloop_edge_frames_total") >= 5
        latency_count = value(first, "qcloop_edge_inference_latency_seconds_count")
        assert latency_count == value(
            first, "qcloop_edge_inference_latency_seconds_bucket", le="+Inf"
        )
        assert latency_count >= 5 and value(first, "qcloop_edge_inference_latency_seconds_sum") > 0
        assert value(first, "qcloop_edge_feedback_images_total", reason="low_confidence") >= 5
        assert value(first, "qcloop_edge_feedback_policy_total", policy="band", outcome="sent") >= 5
        # and the spool holds what the store did not take, counting the failures
        assert value(first, "qcloop_edge_spool_depth") >= 1
        assert value(first, "qcloop_edge_spool_bytes") > 1000
        assert value(first, "qcloop_edge_upload_failures_total") >= 1
        assert value(first, "qcloop_edge_uploads_total") == 0
        assert value(first, "qcloop_edge_disk_free_bytes") > 0

        # when the store comes back and an operator sends a frame back
        own_s3.up()
        wait_until(lambda: agent.stats().feedback_images >= 3, what="uploads")
        frame = InferenceResult.from_json(results.on(results_topic(config.device_id))[-1]).image
        verdict = {"frame": frame, "verdict": "missed_defect", "by": "alice"}
        publish_verdict(config, json.dumps(verdict))
        wait_until(lambda: agent.stats().verdicts_sent == 1, what="the verdict spooled")
        second = scrape(url)
        # then frames, latencies, uploads and feedback by reason moved
        assert value(second, "qcloop_edge_frames_total") > value(first, "qcloop_edge_frames_total")
        assert value(second, "qcloop_edge_inference_latency_seconds_count") > latency_count
        assert value(second, "qcloop_edge_uploads_total") >= 3
        assert value(second, "qcloop_edge_feedback_images_total", reason="operator_verdict") == 1
        assert value(second, "qcloop_edge_feedback_images_total", reason="low_confidence") > value(
            first, "qcloop_edge_feedback_images_total", reason="low_confidence"
        )
        # and the spool drains
        depth = value(first, "qcloop_edge_spool_depth")
        wait_until(lambda: value(scrape(url), "qcloop_edge_spool_depth") < depth, what="drained")

        # when v2 is released: a swap
        v2 = release_for(constant(tmp_path, 2), config.fleet, version="2")
        publish(mqtt_url, config.fleet, v2)
        wait_until(lambda: agent.stats().swaps == 2, what="v2 swapped in")
        third = scrape(url)
        assert value(third, "qcloop_edge_swaps_total") == 2
        assert [m["version"] for m in labels_of(third, "qcloop_edge_model_info")] == ["2"]
        assert value(third, "qcloop_edge_release_sequence") == 2
        # and when v3 fails on every real frame: a rollback to v2
        v3 = release_for(make_flaky_model(tmp_path / "flaky.onnx"), config.fleet, version="3")
        publish(mqtt_url, config.fleet, v3)
        wait_until(lambda: agent.stats().swaps == 4, what="v3 in, then v2 back")
        fourth = scrape(url)
        assert value(fourth, "qcloop_edge_rollbacks_total") == 1
        assert value(fourth, "qcloop_edge_models_rejected_total") == 1
        assert value(fourth, "qcloop_edge_swaps_total") == 4
        assert value(fourth, "qcloop_edge_errors_total") >= 3
        assert [m["version"] for m in labels_of(fourth, "qcloop_edge_model_info")] == ["2"]
        assert value(fourth, "qcloop_edge_release_sequence") == 2
    finally:
        agent.stop()
        thread.join(20)
        results.close()
    # and once the agent stopped, the port is closed
    assert out, "the agent did not stop"
    with pytest.raises(urllib.error.URLError):
        scrape(url)


# ------------------------------------------------------------------ off, and without the package


def test_metrics_are_off_by_default_and_bound_to_this_box_when_on(tmp_path: Path) -> None:
    # given a config without [metrics], and one that only turns them on
    base = {"device_id": "cam1", "source": {"kind": "simulated"}}
    base["release"] = {"insecure_unsigned": True}
    off = EdgeConfig.model_validate(base)
    on = EdgeConfig.model_validate({**base, "metrics": {"enabled": True}})
    # then they are off, and on they listen on 127.0.0.1 only
    assert off.metrics.enabled is False
    assert (on.metrics.host, on.metrics.port) == ("127.0.0.1", 9842)


def test_every_agent_counter_is_exported() -> None:
    exported = {key for key, _ in COUNTER_METRICS.values()} | BY_REASON
    assert exported == set(COUNTERS)


def test_latency_buckets_are_cumulative_with_inclusive_bounds() -> None:
    histogram = LatencyHistogram((0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 3.0):
        histogram.add(seconds)
    buckets, total = histogram.read()
    assert buckets == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]
    assert total == pytest.approx(3.065)


BLOCK = """
import sys
sys.modules["prometheus_client"] = None  # as on a box without the package
from edge_agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
@pytest.mark.parametrize("enabled", [False, True], ids=["off", "on"])
def test_without_prometheus_client_the_agent_inspects(
    enabled: bool, mqtt_url: str, tmp_path: Path
) -> None:
    # given a box without prometheus-client, metrics off or on
    model = constant(tmp_path, 1)
    port = free_port()
    config = write_toml(
        tmp_path,
        f"cam-noprom-{enabled}",
        mqtt_url,
        source='kind = "simulated"\ninterval_s = 0.05',
        sections=f"[metrics]\nenabled = {str(enabled).lower()}\nport = {port}\n",
    )
    # when the agent runs on a model for three frames
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK, "run", "--config", str(config), "--model", str(model),
         "--max-frames", "3", "--timeout", "30"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then it inspected them; with metrics on it said why none are served
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames_inferred"] == 3
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    messages = [e["msg"] for e in lines if e["level"] == "error"]
    if enabled:
        assert any("prometheus-client is not installed" in m for m in messages), proc.stderr
    else:
        assert messages == [], proc.stderr


def test_importing_the_agent_needs_no_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "import edge_agent.metrics, edge_agent.agent, edge_agent.cli; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr

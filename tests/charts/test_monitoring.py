"""The chart's monitoring: the bridge's metrics Service, a ServiceMonitor, the labelling
sync's push to a Pushgateway, the alerts (checked and unit-tested by promtool) and the
Grafana dashboard, all off by default; the rules and the dashboard name only metrics the
code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.fleet_metrics import FleetCollector, FleetReading
from edge_agent.config import EdgeConfig
from edge_agent.health import Health
from edge_agent.metrics import EdgeCollector
from edge_agent.policies import FeedbackPolicies
from edge_agent.stats import Counters
from qcloop.contracts import ModelRef, ReleaseMessage, utcnow
from qcloop.devices import DeviceState
from qcloop_labelling.metrics import families, round_figures, run_figures, sync_in_figures
from qcloop_labelling.round import RoundResult
from qcloop_labelling.sync_in import SyncInReport
from qcloop_labelling.sync_out import STATUSES, SyncOutReport
from tests.charts.conftest import (
    CHART,
    RELEASE,
    REQUIRED_VALUES,
    Helm,
    by_kind,
    kubernetes_validate,
    render,
    template,
)

pytestmark = pytest.mark.integration

PUSHGATEWAY = "monitoring.pushgateway.url=http://prometheus-pushgateway.monitoring:9091"
ALL_ON = (
    "monitoring.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
    "monitoring.prometheusRules.enabled=true",
    "monitoring.prometheusRules.labels.release=kube-prometheus-stack",
    "monitoring.grafanaDashboard.enabled=true",
    PUSHGATEWAY,
)
BRIDGE = f"{RELEASE}-qcloop-release-bridge"
LABELLING = f"{RELEASE}-qcloop-labelling"
PUSHGATEWAY_ENV = "QCLOOP_LABEL_STUDIO__PUSHGATEWAY"
ALERTS = {
    "QcloopDeviceSilent",
    "QcloopDeviceBehindRelease",
    "QcloopSpoolGrowing",
    "QcloopFeedbackSurge",
    "QcloopModelRolledBack",
}
LABELLING_ALERTS = {
    "QcloopLabellingStale",
    "QcloopLabellingStepFailed",
    "QcloopLabellingInvalidTasks",
}


def promtool() -> str:
    """promtool (Debian's `prometheus` package; scripts/test-prerequisites.sh installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool missing: apt-get install prometheus (or scripts/test-prerequisites.sh)"
        )
    return path


def rules_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (rule,) = by_kind(objects, "PrometheusRule").values()
    return dict(rule["spec"])


def dashboard_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (config_map,) = [o for o in by_kind(objects, "ConfigMap").values() if "dashboard" in str(o)]
    (text,) = config_map["data"].values()
    return dict(json.loads(text))


def bridge_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = by_kind(objects, "Deployment")[BRIDGE]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def labelling_env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cronjob = by_kind(objects, "CronJob")[LABELLING]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


# ------------------------------------------------------------------ rendering


def test_monitoring_is_off_by_default(helm: Helm) -> None:
    _, objects = render(helm)
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert not [o for o in objects if "metrics" in o["metadata"]["name"]]
    assert not [o for o in objects if "grafana_dashboard" in o["metadata"].get("labels", {})]
    container = bridge_container(objects)
    assert "ports" not in container
    assert not [a for a in container["command"] if a.startswith("--metrics")]
    assert PUSHGATEWAY_ENV not in labelling_env(objects)


def test_monitoring_on_wires_the_bridge_to_prometheus_and_grafana(helm: Helm) -> None:
    # given every monitoring switch on, and the namespace Prometheus runs in
    manifest, objects = render(helm, *ALL_ON, "monitoring.scrapeNamespaces={monitoring}")
    # then the kubernetes schemas accept the objects (the Prometheus Operator's CRDs: warned)
    proc = kubernetes_validate(manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and the bridge serves its metrics on a named port, on every address of its pod
    container = bridge_container(objects)
    assert {"--metrics-port=9843", "--metrics-host=0.0.0.0"} <= set(container["command"])
    assert container["ports"] == [{"name": "metrics", "containerPort": 9843, "protocol": "TCP"}]
    # and a Service selects the bridge's pod, which the ServiceMonitor scrapes by port name
    pod_labels = by_kind(objects, "Deployment")[BRIDGE]["spec"]["template"]["metadata"]["labels"]
    service = by_kind(objects, "Service")[f"{RELEASE}-qcloop-bridge-metrics"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # and the network policy admits scrapes from the monitoring namespace, on that port only
    policy = by_kind(objects, "NetworkPolicy")[f"{RELEASE}-qcloop-bridge-metrics"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9843, "protocol": "TCP"}]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # and the rules carry their selector's label, the dashboard the sidecar's label
    (rule,) = by_kind(objects, "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {r["alert"] for r in rules_of(objects)["groups"][0]["rules"]} == ALERTS
    (dashboard,) = [o for o in objects if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard_of(objects)["uid"] == "qcloop-fleet"


def test_a_pushgateway_gets_the_labelling_syncs_figures_and_alerts(helm: Helm) -> None:
    # given a Pushgateway in the monitoring namespace, the alerts, and egress held tight
    url = "http://prometheus-pushgateway.monitoring:9091"
    manifest, objects = render(
        helm,
        f"monitoring.pushgateway.url={url}",
        "monitoring.prometheusRules.enabled=true",
        "monitoring.scrapeNamespaces={monitoring}",
        "networkPolicy.restrictEgress=true",
    )
    proc = kubernetes_validate(manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # then the labelling CronJob pushes there
    assert labelling_env(objects)[PUSHGATEWAY_ENV] == url
    # and may reach it: the monitoring namespace, on the Pushgateway's port only
    egress = by_kind(objects, "NetworkPolicy")[LABELLING]["spec"]["egress"]
    assert {
        "to": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"port": 9091, "protocol": "TCP"}],
    } in egress
    # and the rules hear about the labelling sync; without the Pushgateway they do not
    groups = {g["name"]: g for g in rules_of(objects)["groups"]}
    assert {r["alert"] for r in groups["qcloop-labelling"]["rules"]} == LABELLING_ALERTS
    _, plain = render(helm, "monitoring.prometheusRules.enabled=true")
    assert [g["name"] for g in rules_of(plain)["groups"]] == ["qcloop-fleet"]
    assert PUSHGATEWAY_ENV not in labelling_env(plain)


def test_lint_strict_passes_with_monitoring_on_and_the_dashboard_elsewhere(helm: Helm) -> None:
    sets = [*ALL_ON, "monitoring.grafanaDashboard.namespace=monitoring"]
    proc = helm("lint", "--strict", str(CHART), "--values", str(REQUIRED_VALUES),
                *(a for s in sets for a in ("--set", s)))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, objects = render(helm, *sets)
    (dashboard,) = [o for o in objects if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert dashboard["metadata"]["namespace"] == "monitoring"


def test_a_service_monitor_without_the_bridges_metrics_is_refused(helm: Helm) -> None:
    proc = template(helm, "monitoring.serviceMonitor.enabled=true")
    assert proc.returncode != 0
    assert "monitoring.serviceMonitor.enabled needs monitoring.enabled" in proc.stderr


def test_monitoring_values_are_checked_by_the_schema(helm: Helm) -> None:
    proc = template(helm, "monitoring.prometheusRules.silentMinutes=soon")
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert "/monitoring/prometheusRules/silentMinutes" in proc.stderr
    proc = template(helm, "monitoring.pushgateway.url=pushgateway:9091")
    assert "/monitoring/pushgateway/url" in proc.stderr


# ------------------------------------------------------------------ the rules, by promtool


def test_the_rules_pass_promtool_check(helm: Helm, tmp_path: Path) -> None:
    _, objects = render(helm, "monitoring.prometheusRules.enabled=true", PUSHGATEWAY)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_of(objects)))
    proc = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS | LABELLING_ALERTS)} rules found" in proc.stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"fleet": "line-1", **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _fires(alert: str, at: str, *devices: str) -> dict[str, Any]:
    expected = [
        {"exp_labels": {"severity": "warning", "fleet": "line-1", "device": d}} for d in devices
    ]
    return {"eval_time": at, "alertname": alert, "exp_alerts": expected}


# Each alert with the series that should raise it (device "bad") and one that should not
# ("good"), evaluated where the alert must be quiet yet and where it must fire.
RULE_TESTS: list[dict[str, Any]] = [
    {  # heartbeats stop at t=0 for "bad", go on every minute for "good"
        "interval": "1m",
        "input_series": [
            _series("qcloop_fleet_device_heartbeat_timestamp_seconds", "0x20", device="bad"),
            _series("qcloop_fleet_device_heartbeat_timestamp_seconds", "0+60x20", device="good"),
        ],
        "alert_rule_test": [
            _fires("QcloopDeviceSilent", "9m"),
            _fires("QcloopDeviceSilent", "11m", "bad"),
        ],
    },
    {  # the fleet's release is version 2; "bad" serves 1 for more than 30 minutes
        "interval": "1m",
        "input_series": [
            _series("qcloop_fleet_release_version", "2x40"),
            _series("qcloop_fleet_device_model_version", "1x40", device="bad"),
            _series("qcloop_fleet_device_model_version", "2x40", device="good"),
        ],
        "alert_rule_test": [
            _fires("QcloopDeviceBehindRelease", "20m"),
            _fires("QcloopDeviceBehindRelease", "31m", "bad"),
        ],
    },
    {  # "bad"'s spool grows by 5 images a minute; "good" holds 60, not growing
        "interval": "1m",
        "input_series": [
            _series("qcloop_fleet_device_spool_depth", "0+5x40", device="bad"),
            _series("qcloop_fleet_device_spool_depth", "60x40", device="good"),
        ],
        "alert_rule_test": [
            _fires("QcloopSpoolGrowing", "12m"),
            _fires("QcloopSpoolGrowing", "20m", "bad"),
        ],
    },
    {  # a day at 1 frame sent back a minute, then "bad" at 10 a minute; "good" stays at 1
        "interval": "1m",
        "input_series": [
            _series("qcloop_fleet_device_feedback_sent_total", "0+1x1440 1450+10x60", device="bad"),
            _series("qcloop_fleet_device_feedback_sent_total", "0+1x1500", device="good"),
        ],
        "alert_rule_test": [
            _fires("QcloopFeedbackSurge", "1d"),
            _fires("QcloopFeedbackSurge", "1d30m", "bad"),
        ],
    },
    {  # "bad" rejects a model at minute 10
        "interval": "1m",
        "input_series": [
            _series("qcloop_fleet_device_models_rejected_total", "0x10 1x20", device="bad"),
            _series("qcloop_fleet_device_models_rejected_total", "0x30", device="good"),
        ],
        "alert_rule_test": [
            _fires("QcloopModelRolledBack", "9m"),
            _fires("QcloopModelRolledBack", "12m", "bad"),
        ],
    },
]


def _step(name: str, values: str, step: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"project": "defects", "step": step, **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _step_fires(alert: str, at: str, *steps: str, **labels: str) -> dict[str, Any]:
    expected = [
        {"exp_labels": {"severity": "warning", "project": "defects", "step": s, **labels}}
        for s in steps
    ]
    return {"eval_time": at, "alertname": alert, "exp_alerts": expected}


# The labelling sync's alerts, on what its steps push: "sync-in" in trouble, "round" fine.
LABELLING_RULE_TESTS: list[dict[str, Any]] = [
    {  # the sync-in last succeeded at t=0 (its timestamp: 0); the round succeeds every minute
        "interval": "1m",
        "input_series": [
            _step("qcloop_labelling_last_success_timestamp_seconds", "0x120", "sync-in"),
            _step("qcloop_labelling_last_success_timestamp_seconds", "0+60x120", "round"),
        ],
        "alert_rule_test": [
            _step_fires("QcloopLabellingStale", "89m"),
            _step_fires("QcloopLabellingStale", "91m", "sync-in"),
        ],
    },
    {  # the sync-in fails from minute 10 on
        "interval": "1m",
        "input_series": [
            _step("qcloop_labelling_run_failed", "0x10 1x20", "sync-in"),
            _step("qcloop_labelling_run_failed", "0x30", "round"),
        ],
        "alert_rule_test": [
            _step_fires("QcloopLabellingStepFailed", "9m"),
            _step_fires("QcloopLabellingStepFailed", "11m", "sync-in"),
        ],
    },
    {  # from minute 10, two invalid tasks wait (beside pending ones, which are no trouble)
        "interval": "1m",
        "input_series": [
            _step("qcloop_labelling_export_tasks", "0x10 2x80", "round", status="invalid"),
            _step("qcloop_labelling_export_tasks", "5x90", "round", status="pending"),
        ],
        "alert_rule_test": [
            _step_fires("QcloopLabellingInvalidTasks", "69m"),
            _step_fires("QcloopLabellingInvalidTasks", "71m", "round", status="invalid"),
        ],
    },
]


def test_each_alert_fires_on_its_trouble_and_not_before(helm: Helm, tmp_path: Path) -> None:
    # given the rendered rules (their annotations are text for people: left out here)
    _, objects = render(helm, "monitoring.prometheusRules.enabled=true", PUSHGATEWAY)
    spec = rules_of(objects)
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    cases = [*RULE_TESTS, *LABELLING_RULE_TESTS]
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    assert {t["alert_rule_test"][0]["alertname"] for t in cases} == ALERTS | LABELLING_ALERTS
    # when promtool evaluates them on the series; then each fires where it must, only there
    proc = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ only metrics that exist


class _Link:
    connected = False


def exported_names() -> set[str]:
    """Every sample name the agent's and the bridge's collectors, and the labelling jobs'
    pushes, can export."""
    config = EdgeConfig.model_validate(
        {
            "device_id": "cam1",
            "source": {"kind": "simulated"},
            "release": {"insecure_unsigned": True},
        }
    )
    edge = EdgeCollector(
        Health(config, Counters(), FeedbackPolicies(config.feedback)), lambda: None, _Link()
    )
    fleet = FleetCollector("line-1")
    now = utcnow()
    release = ReleaseMessage(
        fleet="line-1", model=ModelRef(name="det", version="2"), sha256="ab" * 32, size=1,
        url="file:///m.onnx", input_size=320, class_names=["scratch"], released_by="t",
        sequence=2, released_at=now, expires_at=now.replace(year=now.year + 1),
    )  # fmt: skip
    device = DeviceState(status="serving", device_id="d", fleet="line-1", model=release.model)
    fleet.update(FleetReading("line-1", 2, release, [device.model_dump(mode="json")]))
    export = SyncOutReport(1, Path("out"), dict.fromkeys(STATUSES, 0), 0, outcomes=())
    labelling = [
        *run_figures(0.0, 1.0, failed=False),
        *sync_in_figures(SyncInReport(1, 0, 0, 0, 0, 0, ())),
        *round_figures(RoundResult(export, None, False)),
    ]
    suffixes = {"counter": ["_total"], "gauge": [""], "info": ["_info"]}
    suffixes["histogram"] = ["_bucket", "_count", "_sum"]
    return {
        family.name + suffix
        for family in [*edge.collect(), *fleet.collect(), *families(labelling)]
        for suffix in suffixes[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """The qcloop metrics a PromQL expression names (every one starts with ``qcloop_``)."""
    return set(re.findall(r"\bqcloop_[a-zA-Z0-9_:]*", expr))


def test_the_rules_and_the_dashboard_name_only_metrics_the_code_exports(
    helm: Helm, tmp_path: Path
) -> None:
    # given what the code exports, and the chart's rules and dashboard
    exported = exported_names()
    _, objects = render(helm, *ALL_ON)
    rules = [r["expr"] for g in rules_of(objects)["groups"] for r in g["rules"]]
    dashboard = dashboard_of(objects)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    # then every expression names metrics, and only metrics that exist
    for expr in [*rules, *queries, *variables]:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{expr}: {sorted(names - exported)} not exported"
    # and every dashboard query is valid PromQL (promtool checks it as a recording rule)
    recorded = [
        {
            "record": f"dashboard:query{i}",
            "expr": re.sub(r"\$(fleet|device|project)\b", ".*", q),
        }
        for i, q in enumerate(queries)
    ]
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]})
    )
    proc = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "queries.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

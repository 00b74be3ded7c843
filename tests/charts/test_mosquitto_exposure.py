"""How the chart exposes the broker (TLS only from outside) and its operator users."""

from __future__ import annotations

import pytest

from tests.charts.conftest import FLEETS_VALUES, RELEASE, Helm, by_kind, render


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_broker_is_exposed_outside_the_cluster_over_tls_only(helm: Helm, service_type: str) -> None:
    # Given TLS on and the broker exposed to edge boxes outside the cluster
    _, objects = render(helm, f"mosquitto.service.type={service_type}", values=(FLEETS_VALUES,))
    services = by_kind(objects, "Service")
    name = f"{RELEASE}-qcloop-mosquitto"
    # Then the exposed Service carries the TLS port alone
    external = services[f"{name}-external"]["spec"]
    assert external["type"] == service_type
    assert [(p["name"], p["port"]) for p in external["ports"]] == [("mqtts", 8883)]
    # And the in-cluster one (the bridge's URL) stays ClusterIP with plain MQTT too
    internal = services[name]["spec"]
    assert internal["type"] == "ClusterIP"
    assert {p["port"] for p in internal["ports"]} == {1883, 8883}
    # And the NetworkPolicy admits any address on the TLS port only, 1883 in-cluster only
    ingress = by_kind(objects, "NetworkPolicy")[name]["spec"]["ingress"]
    anywhere = [rule for rule in ingress if "from" not in rule]
    assert anywhere == [{"ports": [{"port": 8883, "protocol": "TCP"}]}]
    assert {p["port"] for p in ingress[0]["ports"]} == {1883, 8883} and ingress[0]["from"]


def test_clusterip_broker_has_no_external_service(helm: Helm) -> None:
    _, objects = render(helm, values=(FLEETS_VALUES,))
    services = by_kind(objects, "Service")
    assert f"{RELEASE}-qcloop-mosquitto-external" not in services
    assert services[f"{RELEASE}-qcloop-mosquitto"]["spec"]["type"] == "ClusterIP"


def test_operators_get_a_password_secret_and_verdict_only_acl(helm: Helm) -> None:
    _, objects = render(helm, values=(FLEETS_VALUES,))
    name = f"{RELEASE}-qcloop-mosquitto"
    assert set(by_kind(objects, "Secret")[f"{name}-operators"]["data"]) == {"shift-lead"}
    acl = by_kind(objects, "ConfigMap")[name]["data"]["acl"]
    block = acl.split("user shift-lead\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == ["topic write qcloop/devices/+/verdict", "topic read qcloop/devices/+/state"]
    init = by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["initContainers"][0]
    assert {"name": "OPERATORS", "value": "shift-lead"} in init["env"]

"""qcloop's own MQTT client against the REAL mosquitto the chart configures: TLS with
``mqtt.ca_file``, a broker certificate from another CA refused, and the operator user.

The broker (the chart's rendered mosquitto.conf, ACL and password file) is the fixture of
test_mosquitto_acl.py; its TLS certificate for 127.0.0.1 is its own CA.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from qcloop.errors import BrokerUnavailable, ConfigError
from qcloop.mqtt import make_client, publish_once, read_retained
from qcloop.settings import MqttSettings
from tests.charts import test_mosquitto_acl as acl
from tests.charts.test_mosquitto_acl import BRIDGE, Broker, Client, _drain, _self_signed, _token

pytestmark = pytest.mark.integration

OPERATOR = "shift-lead"
broker = acl.broker  # the module-scoped fixture: the chart's mosquitto, here too


def _tls_settings(broker: Broker, user: str, ca_file: Path) -> MqttSettings:
    return MqttSettings(
        url=f"mqtts://127.0.0.1:{broker.tls_port}",
        username=user,
        password=broker.passwords[user],  # type: ignore[arg-type]
        ca_file=ca_file,
    )


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    made = {user: Client(broker, user) for user in (BRIDGE, "dev-a", "dev-b", OPERATOR)}
    for client in made.values():
        assert client.reason == 0, client.reason
    yield made
    for client in made.values():
        client.close()


def test_client_with_ca_file_reads_the_retained_release_over_tls(
    broker: Broker,
    clients: dict[str, Client],
) -> None:
    # Given a retained release for fleet A
    release = _token("tls-release")
    clients[BRIDGE].publish("qcloop/fleets/line-a/release", release, retain=True)
    # When device A reads it through mqtts:// with mqtt.ca_file = the broker's CA
    settings = _tls_settings(broker, "dev-a", broker.ca)
    # Then the broker's certificate and host name check out and the release arrives
    assert read_retained(settings, "qcloop/fleets/line-a/release") == release


def test_broker_certificate_from_another_ca_is_refused(
    broker: Broker,
    tmp_path: Path,
) -> None:
    # Given a ca_file of a CA that did not sign the broker's certificate
    other_ca, _ = _self_signed(tmp_path)
    settings = _tls_settings(broker, "dev-a", other_ca)
    # When the device connects, then it refuses the broker, naming the check and the setting
    with pytest.raises(BrokerUnavailable, match=r"failed the certificate check.*mqtt\.ca_file"):
        read_retained(settings, "qcloop/fleets/line-a/release")


def test_operator_sends_a_verdict_the_device_receives_over_tls(
    broker: Broker,
    clients: dict[str, Client],
) -> None:
    # Given device A listening for verdicts
    device = clients["dev-a"]
    device.subscribe("qcloop/devices/dev-a/verdict")
    # When the operator publishes one the way `qcloop-edge verdict` does (TLS, ca_file)
    verdict = _token("verdict")
    publish_once(
        _tls_settings(broker, OPERATOR, broker.ca),
        "qcloop/devices/dev-a/verdict",
        verdict,
        retain=False,
    )
    # Then the device gets it
    assert ("qcloop/devices/dev-a/verdict", verdict) in device.until(
        "qcloop/devices/dev-a/verdict", verdict
    )


def test_devices_cannot_send_verdicts_and_operators_write_nothing_else(
    clients: dict[str, Client],
) -> None:
    # Given device A listening for verdicts and the bridge watching releases and reports
    device, bridge, operator = clients["dev-a"], clients[BRIDGE], clients[OPERATOR]
    device.subscribe("qcloop/devices/dev-a/verdict")
    for topic in ("release", "state", "results"):
        bridge.subscribe(f"qcloop/devices/+/{topic}")
    bridge.subscribe("qcloop/fleets/+/release")
    # When device B sends device A a verdict, the operator writes a release, a state and
    # results, and then the operator sends its verdict (allowed)
    forged, own = _token("forged"), _token("verdict")
    clients["dev-b"].publish("qcloop/devices/dev-a/verdict", forged)
    operator.publish("qcloop/devices/dev-a/release", forged, retain=True)
    operator.publish("qcloop/fleets/line-a/release", forged, retain=True)
    operator.publish("qcloop/devices/dev-a/state", forged, retain=True)
    operator.publish("qcloop/devices/dev-a/results", forged)
    operator.publish("qcloop/devices/dev-a/verdict", own)
    # Then only the operator's verdict went through
    seen = device.until("qcloop/devices/dev-a/verdict", own)
    assert [m for m in seen + _drain(bridge) if m[1] == forged] == []


def test_operator_reads_device_states(clients: dict[str, Client]) -> None:
    state = _token("state")
    clients["dev-a"].publish("qcloop/devices/dev-a/state", state, retain=True)
    operator = clients[OPERATOR]
    operator.subscribe("qcloop/devices/+/state")
    assert ("qcloop/devices/dev-a/state", state) in operator.until(
        "qcloop/devices/dev-a/state", state
    )


@pytest.mark.parametrize("setting", ["ca_file", "cert_file"])
def test_missing_tls_file_is_a_config_error_naming_the_setting(
    tmp_path: Path, setting: str
) -> None:
    missing = tmp_path / "nope.pem"
    settings = MqttSettings.model_validate({"url": "mqtts://broker.example:8883", setting: missing})
    with pytest.raises(ConfigError, match=re.escape(f"mqtt.{setting} '{missing}' cannot be read")):
        make_client(settings)


def test_ca_file_that_is_no_pem_is_a_config_error(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    settings = MqttSettings(url="mqtts://broker.example:8883", ca_file=junk)
    with pytest.raises(ConfigError, match=r"mqtt\.ca_file is not a usable PEM file"):
        make_client(settings)


def test_tls_files_need_an_mqtts_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"mqtt\.ca_file need an mqtts://"):
        MqttSettings(url="mqtt://broker.example:1883", ca_file=tmp_path / "ca.pem")
    with pytest.raises(ValidationError, match=r"mqtt\.key_file needs mqtt\.cert_file"):
        MqttSettings(url="mqtts://broker.example:8883", key_file=tmp_path / "k.pem")

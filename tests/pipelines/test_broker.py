"""The embedded broker: both kinds carry retained messages; a taken port is named."""

from __future__ import annotations

import pytest

from pipelines.broker import EmbeddedBroker
from qcloop.errors import BrokerUnavailable
from qcloop.mqtt import publish_retained, release_topic
from qcloop.settings import MqttSettings
from tests.conftest import read_retained
from tests.services import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_retained_release_reaches_late_subscriber(kind: str) -> None:
    with EmbeddedBroker(free_port(), prefer=kind) as broker:
        assert broker.kind == kind
        settings = MqttSettings(url=broker.url)
        publish_retained(settings, release_topic("line-1"), b'{"hello": 1}')
        assert read_retained(settings, release_topic("line-1")) == b'{"hello": 1}'


def test_taken_port_is_named() -> None:
    with (
        EmbeddedBroker(free_port()) as first,
        pytest.raises(BrokerUnavailable, match=f"port {first.port}"),
    ):
        EmbeddedBroker(first.port).start()


def test_unreachable_broker_is_named() -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match=r"127.0.0.1"):
        publish_retained(settings, "x/y", b"z")

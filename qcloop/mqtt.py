"""MQTT topic names and a small client factory shared by the bridge and the agent.

Topics (``<fleet>`` and ``<device>`` match ``[A-Za-z0-9_.-]+``):
  qcloop/fleets/<fleet>/release     retained signed release (qcloop.signing) for the fleet
  qcloop/devices/<device>/results   InferenceResult per frame
  qcloop/devices/<device>/state     retained device state (serving model, status)
  qcloop/devices/<device>/release   retained signed release for one device; wins over the
                                    fleet's while present (an empty retained message clears it)
  qcloop/devices/<device>/verdict   operator verdict on a recent frame: JSON {frame, verdict,
                                    by, note}; the device sends that frame back
"""

from __future__ import annotations

import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from qcloop.errors import BrokerUnavailable, ConfigError
from qcloop.settings import MqttSettings

ROOT = "qcloop"
RETAINED_GRACE_S = 0.5  # a broker sends the retained message right after the SUBACK


def release_topic(fleet: str) -> str:
    """Retained release topic of a fleet."""
    return f"{ROOT}/fleets/{fleet}/release"


def results_topic(device_id: str) -> str:
    """Per-frame results of a device."""
    return f"{ROOT}/devices/{device_id}/results"


def state_topic(device_id: str) -> str:
    """Retained state of a device."""
    return f"{ROOT}/devices/{device_id}/state"


def device_release_topic(device_id: str) -> str:
    """Retained per-device release override."""
    return f"{ROOT}/devices/{device_id}/release"


def verdict_topic(device_id: str) -> str:
    """Operator verdicts on a device's recent frames (not retained)."""
    return f"{ROOT}/devices/{device_id}/verdict"


def client_id(kind: str, device_id: str) -> str:
    """``<kind>-<device id>-<random>``: readable in the broker's log, yet not guessable,
    so that nobody can take over a device's session by connecting with its client id."""
    return f"{kind}-{device_id}-{uuid.uuid4().hex[:12]}"


def make_client(settings: MqttSettings, client_id: str | None = None) -> mqtt.Client:
    """A paho client (callback API v2) configured from settings; not yet connected."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"qcloop-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        _set_tls(client, settings)
    return client


def _readable(setting: str, path: Path | None) -> str | None:
    """The path as a string, or ``ConfigError`` naming the setting when it cannot be read."""
    if path is None:
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"mqtt.{setting} '{path}' cannot be read: {exc.strerror}") from None
    return str(path)


def _set_tls(client: mqtt.Client, settings: MqttSettings) -> None:
    """TLS 1.2+ with the broker's certificate and host name checked against ``ca_file``
    (the system's CA store when unset); a client certificate when ``cert_file`` is set."""
    ca = _readable("ca_file", settings.ca_file)
    cert = _readable("cert_file", settings.cert_file)
    key = _readable("key_file", settings.key_file)
    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert:
            context.load_cert_chain(cert, keyfile=key)
    except ssl.SSLError as exc:
        names = "mqtt.ca_file" if not cert else "mqtt.ca_file, mqtt.cert_file or mqtt.key_file"
        raise ConfigError(f"{names} is not a usable PEM file ({exc.reason or exc})") from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    client.tls_set_context(context)


def connect(client: mqtt.Client, settings: MqttSettings, keepalive: int = 30) -> None:
    """Connect or raise ``BrokerUnavailable`` naming the URL."""
    try:
        client.connect(settings.host, settings.port, keepalive=keepalive)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerUnavailable(
            f"MQTT broker {settings.url} failed the certificate check "
            f"({exc.verify_message or exc}); mqtt.ca_file must be the CA that signed the "
            "broker's certificate, issued for that host name"
        ) from None
    except (TimeoutError, OSError) as exc:
        raise BrokerUnavailable(
            f"MQTT broker {settings.url} is unreachable ({exc}); "
            "check that it runs and the mqtt.url setting (`qcloop broker` starts a local one)"
        ) from None


def publish_once(
    settings: MqttSettings, topic: str, payload: bytes | str, *, retain: bool, timeout: float = 10.0
) -> None:
    """Connect, publish one QoS-1 message, wait until the broker has it, disconnect."""
    client = make_client(settings)
    connect(client, settings)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise BrokerUnavailable(f"MQTT broker {settings.url} did not acknowledge {topic}")
    finally:
        client.disconnect()
        client.loop_stop()


def publish_retained(
    settings: MqttSettings, topic: str, payload: bytes, timeout: float = 10.0
) -> None:
    """Publish one retained QoS-1 message and wait until the broker has it."""
    publish_once(settings, topic, payload, retain=True, timeout=timeout)


def read_retained(settings: MqttSettings, topic: str, timeout: float = 5.0) -> bytes | None:
    """The message retained on ``topic``, or None when the broker holds none.

    ``BrokerUnavailable`` if it cannot be reached or does not acknowledge the subscription
    within ``timeout`` seconds.
    """
    got: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == topic and message.retain:
            got.append(bytes(message.payload))
            arrived.set()

    client = make_client(settings)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    connect(client, settings)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise BrokerUnavailable(f"MQTT broker {settings.url} did not let us read {topic}")
        arrived.wait(RETAINED_GRACE_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None

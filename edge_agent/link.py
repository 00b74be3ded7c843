"""The agent's MQTT link: release subscription, results, retained state and last will.

paho's network thread runs in the background (``loop_start``) and reconnects by
itself; the release subscription is renewed on every connect, so the retained
release arrives again after a broker restart. If the broker is down at start the
agent still starts (a ``--model`` or the last good model keeps inspecting) and
connects when it can. Two release topics are followed: the fleet's and the
device's own override; the loader decides which one applies. Operator verdicts
(``qcloop/devices/<id>/verdict``) are handed to the agent as raw bytes.

While the broker is away paho holds up to ``link.max_queued`` QoS-1 messages
(results and heartbeats). When that queue is full paho refuses the *new*
message (``MQTT_ERR_QUEUE_SIZE``): the oldest are kept and sent first on
reconnect, the newest are dropped, counted in ``mqtt_dropped`` and logged once
per outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt

from edge_agent.config import EdgeConfig, OperatorConfig
from edge_agent.stats import Counters
from qcloop.devices import DeviceState
from qcloop.errors import BrokerUnavailable, ContractError
from qcloop.mqtt import (
    client_id,
    connect,
    device_release_topic,
    make_client,
    publish_once,
    release_topic,
    results_topic,
    state_topic,
    verdict_topic,
)

log = logging.getLogger(__name__)

# Where a release came from: the fleet's topic or this device's own
ReleaseOrigin = Literal["fleet", "device"]


class MqttLink:
    """Subscribes to the fleet's release topic and publishes this device's messages."""

    def __init__(
        self,
        config: EdgeConfig,
        on_release: Callable[[bytes, ReleaseOrigin], None],
        on_verdict: Callable[[bytes], None] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self._settings = config.mqtt
        self._counters = counters or Counters()
        self._dropping = False  # the queue is full: logged once until a message is queued
        self.device_id = config.device_id
        self.release_topic = release_topic(config.fleet)
        self.device_release_topic = device_release_topic(config.device_id)
        self.results_topic = results_topic(config.device_id)
        self.state_topic = state_topic(config.device_id)
        self.verdict_topic = verdict_topic(config.device_id)
        self._on_release = on_release
        self._on_verdict = on_verdict
        self._client = make_client(
            config.mqtt, client_id=client_id("qcloop-edge", config.device_id)
        )
        offline = DeviceState(status="offline", device_id=config.device_id, fleet=config.fleet)
        self._client.will_set(self.state_topic, offline.model_dump_json(), qos=1, retain=True)
        self._client.reconnect_delay_set(
            min_delay=config.link.reconnect_min_s, max_delay=config.link.reconnect_max_s
        )
        self._client.max_queued_messages_set(config.link.max_queued)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect (or keep trying in the background) and start the network thread."""
        try:
            connect(self._client, self._settings)
        except BrokerUnavailable as exc:
            log.error(
                "MQTT broker unreachable, retrying in the background", extra={"error": str(exc)}
            )
            self._client.connect_async(self._settings.host, self._settings.port, keepalive=30)
        self._client.loop_start()

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""
        return bool(self._client.is_connected())

    def publish_result(self, payload: str) -> None:
        """One InferenceResult (QoS 1; queued by paho while disconnected)."""
        self._queued(self._client.publish(self.results_topic, payload, qos=1))

    def publish_state(self, state: DeviceState) -> mqtt.MQTTMessageInfo:
        """The retained device state (the heartbeat)."""
        info = self._client.publish(self.state_topic, state.model_dump_json(), qos=1, retain=True)
        return self._queued(info)

    def _queued(self, info: mqtt.MQTTMessageInfo) -> mqtt.MQTTMessageInfo:
        """Count a message paho refused because its queue is full (the newest is dropped)."""
        if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
            self._dropping = False
            return info
        self._counters.add("mqtt_dropped")
        if not self._dropping:
            self._dropping = True
            log.warning(
                "MQTT queue full, dropping new messages until the broker takes them",
                extra={"max_queued": self._client.max_queued_messages},
            )
        return info

    def close(self, final_state: DeviceState, timeout: float = 3.0) -> None:
        """Publish the final (offline) state, then disconnect cleanly."""
        info = self.publish_state(final_state)
        if self._client.is_connected():
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("final state not acknowledged by the broker")
            self._client.disconnect()
        self._client.loop_stop()  # not connected: the broker publishes the last will instead

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused", extra={"reason": str(reason)})
            return
        topics = [self.release_topic, self.device_release_topic]
        if self._on_verdict is not None:
            topics.append(self.verdict_topic)
        client.subscribe([(topic, 1) for topic in topics])
        log.info(
            "MQTT connected",
            extra={"broker": f"{self._settings.host}:{self._settings.port}", "topics": topics},
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT disconnected, reconnecting", extra={"reason": str(reason)})

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.release_topic:
            self._on_release(bytes(message.payload), "fleet")
        elif message.topic == self.device_release_topic:
            self._on_release(bytes(message.payload), "device")
        elif message.topic == self.verdict_topic and self._on_verdict is not None:
            self._on_verdict(bytes(message.payload))


def publish_verdict(
    config: EdgeConfig | OperatorConfig, payload: str, timeout: float = 10.0
) -> None:
    """Publish one operator verdict (QoS 1, not retained) to the device; wait for the broker."""
    publish_once(
        config.mqtt, verdict_topic(config.device_id), payload, retain=False, timeout=timeout
    )


def read_retained_state(
    config: EdgeConfig | OperatorConfig, timeout: float = 5.0
) -> DeviceState | None:
    """The device's retained state as the broker holds it (None if none within ``timeout``).

    ``BrokerUnavailable`` if the broker cannot be reached; ``ContractError`` if the
    retained payload is not a ``DeviceState``.
    """
    topic = state_topic(config.device_id)
    got: list[bytes] = []
    done = threading.Event()
    client = make_client(config.mqtt, client_id=client_id("qcloop-edge-status", config.device_id))

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        got.append(bytes(message.payload))
        done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    connect(client, config.mqtt)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if not got or not got[0]:
        return None
    try:
        return DeviceState.model_validate_json(got[0])
    except ValueError as exc:
        raise ContractError(f"{topic}: not a device state: {exc}") from None

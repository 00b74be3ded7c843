"""The broker config the chart renders, loaded into a REAL mosquitto: the ACL holds.

The ConfigMap's mosquitto.conf and acl, and the init container's own script (it hashes the
bridge's and the devices' Secrets with `mosquitto_passwd -b`), run here with the paths moved
to a temp dir. Then paho clients act as devices of two fleets and as the release bridge.
Mosquitto drops a denied publish silently and never delivers a denied read, so every
negative check is paired with a positive one that must arrive first or in the same window.
"""

from __future__ import annotations

import base64
import os
import pwd
import queue
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.charts.conftest import FLEETS_VALUES, Helm, by_kind, render
from tests.services import MosquittoProcess, free_port, wait_port

pytestmark = pytest.mark.integration

BRIDGE = "qcloop"
QUIET_S = 0.5  # how long a denied message gets to (not) arrive after its positive twin


@dataclass(frozen=True)
class Broker:
    port: int
    passwords: dict[str, str]
    tls_port: int
    ca: Path


def _decode(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _local_conf(conf: str, paths: dict[str, Path], ports: dict[str, int]) -> str:
    """The rendered mosquitto.conf on loopback ports with local paths, persistence off."""
    out = []
    for line in conf.splitlines():
        if line.startswith("listener "):
            line = f"listener {ports[line.split()[1]]} 127.0.0.1"
        if line.startswith(("persistence ", "persistence_location", "autosave_interval")):
            continue
        for cluster_path, local in paths.items():
            line = line.replace(cluster_path, str(local))
        out.append(line)
    # As root, mosquitto would switch to the `mosquitto` user, which cannot read the 0600 files.
    out.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
    return "\n".join(out) + "\n"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, like the kubernetes.io/tls Secret holds."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qcloop-mosquitto")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp / "tls.crt", tmp / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@pytest.fixture(scope="module")
def broker(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # Given the chart rendered with two fleets of one device each
    _, objects = render(helm, values=(FLEETS_VALUES,))
    name = "qc-qcloop-mosquitto"
    config = by_kind(objects, "ConfigMap")[name]["data"]
    secrets = by_kind(objects, "Secret")
    bridge, devices = _decode(secrets[name]), _decode(secrets[f"{name}-devices"])
    operators = _decode(secrets[f"{name}-operators"])
    init = by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["initContainers"][0]
    # And the init container's script run here on the rendered Secrets
    tmp = tmp_path_factory.mktemp("mosquitto-acl")
    for folder, users in (("devices", devices), ("operators", operators)):
        (tmp / folder).mkdir()
        for user, password in users.items():
            (tmp / folder / user).write_text(password)
    script = (
        init["command"][-1]
        .replace("/mosquitto/passwd", str(tmp))
        .replace("/secrets/devices", str(tmp / "devices"))
        .replace("/secrets/operators", str(tmp / "operators"))
    )
    env = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    env |= {"MQTT_USERNAME": bridge["username"], "MQTT_PASSWORD": bridge["password"]}
    proc = subprocess.run(
        ["/bin/sh", "-ec", script],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    passwd, acl = tmp / "passwd", tmp / "acl"
    assert {line.split(":")[0] for line in passwd.read_text().splitlines()} == {
        BRIDGE,
        "dev-a",
        "dev-b",
        *operators,
    }
    acl.write_text(config["acl"])
    crt, _ = _self_signed(tmp)
    ports = {"1883": free_port(), "8883": free_port()}
    paths = {
        "/mosquitto/passwd/passwd": passwd,
        "/mosquitto/config/acl": acl,
        "/mosquitto/tls": tmp,
    }
    log = tmp / "mosquitto.log"
    config_text = _local_conf(config["mosquitto.conf"], paths, ports)
    server = MosquittoProcess(tmp, port=ports["1883"], config=config_text, log=log)
    # When a real mosquitto loads them
    try:
        try:
            server.up(timeout=10)
            wait_port(ports["8883"], timeout=10)
        except TimeoutError:
            pytest.fail(f"mosquitto refused the rendered config:\n{log.read_text()}")
        users = {BRIDGE: bridge["password"], **devices, **operators}
        yield Broker(ports["1883"], users, ports["8883"], crt)
    finally:
        server.stop()


class Client:
    """A connected paho client that queues what it receives."""

    def __init__(
        self, broker: Broker, user: str, password: str | None = None, tls: bool = False
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected: queue.Queue[Any] = queue.Queue()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}")
        self.mqtt.username_pw_set(user, password or broker.passwords[user])
        self.mqtt.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.mqtt.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.mqtt.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.put(mid)
        if tls:
            self.mqtt.tls_set(ca_certs=str(broker.ca))
        self.mqtt.connect("127.0.0.1", broker.tls_port if tls else broker.port, keepalive=10)
        self.mqtt.loop_start()
        self.reason = self.connected.get(timeout=10)

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the SUBACK (granted or not), so later publishes are seen."""
        result, mid = self.mqtt.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert self.subscribed.get(timeout=5) == mid

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.mqtt.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)

    def until(self, topic: str, payload: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Every message received until (topic, payload) arrives, then QUIET_S more."""
        seen: list[tuple[str, bytes]] = []
        while (topic, payload) not in seen:
            seen.append(self.messages.get(timeout=timeout))
        try:
            while True:
                seen.append(self.messages.get(timeout=QUIET_S))
        except queue.Empty:
            return seen

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    made = {user: Client(broker, user) for user in (BRIDGE, "dev-a", "dev-b")}
    for client in made.values():
        assert client.reason == 0, client.reason
    yield made
    for client in made.values():
        client.close()


def _token(tag: str) -> bytes:
    return f"{tag}-{os.urandom(4).hex()}".encode()


def test_device_reads_its_fleets_retained_release_not_another_fleets(
    clients: dict[str, Client],
) -> None:
    # Given retained releases for both fleets, published by the bridge
    own, other = _token("line-a"), _token("line-b")
    clients[BRIDGE].publish("qcloop/fleets/line-b/release", other, retain=True)
    clients[BRIDGE].publish("qcloop/fleets/line-a/release", own, retain=True)
    # When device A subscribes to fleet B's topic, then to its own
    device = clients["dev-a"]
    device.subscribe("qcloop/fleets/line-b/release")
    device.subscribe("qcloop/fleets/line-a/release")
    # Then it gets its own fleet's release and never fleet B's
    seen = device.until("qcloop/fleets/line-a/release", own)
    assert [t for t, _ in seen if "line-b" in t] == []
    # And fleet B's release is there for fleet B's device (the denial is the ACL's doing)
    clients["dev-b"].subscribe("qcloop/fleets/line-b/release")
    assert ("qcloop/fleets/line-b/release", other) in clients["dev-b"].until(
        "qcloop/fleets/line-b/release", other
    )


def test_device_cannot_read_another_devices_release_override(
    clients: dict[str, Client],
) -> None:
    # Given per-device release overrides for both devices
    mine, theirs = _token("dev-a"), _token("dev-b")
    clients[BRIDGE].publish("qcloop/devices/dev-b/release", theirs, retain=True)
    clients[BRIDGE].publish("qcloop/devices/dev-a/release", mine, retain=True)
    # When device A subscribes to B's override (and with a wildcard), then to its own
    device = clients["dev-a"]
    device.subscribe("qcloop/devices/dev-b/release")
    device.subscribe("qcloop/devices/+/release")
    device.subscribe("qcloop/devices/dev-a/release")
    # Then only its own override arrives
    seen = device.until("qcloop/devices/dev-a/release", mine)
    assert all(topic == "qcloop/devices/dev-a/release" for topic, _ in seen), seen


def test_device_cannot_publish_as_another_device_or_as_the_bridge(
    clients: dict[str, Client],
) -> None:
    # Given the bridge (it may read every device's topics) watching them and the releases
    watcher = clients[BRIDGE]
    watcher.subscribe("qcloop/devices/+/results")
    watcher.subscribe("qcloop/devices/+/state")
    watcher.subscribe("qcloop/fleets/+/release")
    # When device A publishes as device B, a fleet release, and then on its own topic
    device, forged, own = clients["dev-a"], _token("forged"), _token("own")
    device.publish("qcloop/devices/dev-b/results", forged)
    device.publish("qcloop/devices/dev-b/state", forged, retain=True)
    device.publish("qcloop/fleets/line-a/release", forged, retain=True)
    device.publish("qcloop/devices/dev-a/results", own)
    # Then the broker dropped the forged ones silently and delivered its own
    seen = watcher.until("qcloop/devices/dev-a/results", own)
    assert [m for m in seen if m[1] == forged] == []


def test_device_cannot_retain_on_its_own_release_topic_nor_write_other_topics(
    clients: dict[str, Client],
) -> None:
    # Given a release the bridge retained on device A's override topic, the bridge watching
    # the devices' states and releases, and each device its own verdict topic (readable)
    bridge, device, other = clients[BRIDGE], clients["dev-a"], clients["dev-b"]
    release, forged, own = _token("release"), _token("forged"), _token("state")
    bridge.publish("qcloop/devices/dev-a/release", release, retain=True)
    bridge.subscribe("qcloop/devices/+/state")
    bridge.subscribe("qcloop/devices/+/release")
    device.subscribe("qcloop/devices/dev-a/verdict")
    other.subscribe("qcloop/devices/dev-b/verdict")
    # When device A retains a release of its own, writes its own verdict topic and device
    # B's verdict and release topics, then its state (allowed)
    device.publish("qcloop/devices/dev-a/release", forged, retain=True)
    device.publish("qcloop/devices/dev-a/verdict", forged)
    device.publish("qcloop/devices/dev-b/verdict", forged)
    device.publish("qcloop/devices/dev-b/release", forged, retain=True)
    device.publish("qcloop/devices/dev-a/state", own, retain=True)
    # Then only its state went through: nobody got a forged message
    seen = bridge.until("qcloop/devices/dev-a/state", own)
    assert [m for m in seen if m[1] == forged] == []
    assert [m for m in _drain(device) + _drain(other) if m[1] == forged] == []
    # And the release retained on device A's topic is still the bridge's
    device.subscribe("qcloop/devices/dev-a/release")
    retained = device.until("qcloop/devices/dev-a/release", release)
    assert [m for m in retained if m[1] == forged] == []


def _drain(client: Client) -> list[tuple[str, bytes]]:
    """What the client received within QUIET_S."""
    seen: list[tuple[str, bytes]] = []
    try:
        while True:
            seen.append(client.messages.get(timeout=QUIET_S))
    except queue.Empty:
        return seen


def test_wrong_password_and_unknown_user_are_refused(broker: Broker) -> None:
    for user, password in (("dev-a", "not-its-password"), ("stranger", "whatever")):
        client = Client(broker, user, password)
        try:
            assert client.reason != 0, user
        finally:
            client.close()


def test_device_reads_its_release_over_the_tls_listener(
    broker: Broker, clients: dict[str, Client]
) -> None:
    # Given a retained release for fleet A
    release = _token("tls")
    clients[BRIDGE].publish("qcloop/fleets/line-a/release", release, retain=True)
    # When device A connects to the TLS listener, verifying the broker's certificate
    device = Client(broker, "dev-a", tls=True)
    try:
        assert device.reason == 0, device.reason
        device.subscribe("qcloop/fleets/+/release")
        # Then the same ACL applies: its fleet's release, nothing of fleet B
        seen = device.until("qcloop/fleets/line-a/release", release)
        assert {topic for topic, _ in seen} == {"qcloop/fleets/line-a/release"}
    finally:
        device.close()

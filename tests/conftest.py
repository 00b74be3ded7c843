"""Shared fixtures: real parts (S3 endpoint from moto's server, MQTT broker) and real data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from qcloop.settings import MqttSettings

ROOT = Path(__file__).resolve().parents[1]
METAL_TAGS = ROOT.parent / "shared" / "datasets" / "metal-tags"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def read_retained(settings: MqttSettings, topic: str, timeout: float = 10.0) -> bytes:
    """The retained message on ``topic`` as a fresh subscriber sees it."""
    from qcloop.mqtt import make_client

    got: list[bytes] = []
    done = threading.Event()
    client = make_client(settings)

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        assert done.wait(timeout), f"no retained message on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


@pytest.fixture(scope="session")
def metal_tags() -> Path:
    """The real labelled data set (read-only: copy before training on it)."""
    if not (METAL_TAGS / "images").is_dir():
        pytest.fail(f"real data missing: {METAL_TAGS} (CI lays ../shared beside the repo)")
    return METAL_TAGS


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto's server) on loopback, for the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_port(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_store_settings(s3_endpoint: str, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Store settings for a fresh bucket on the S3 endpoint."""
    from qcloop.settings import StoreSettings

    bucket = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    bucket = "".join(c for c in bucket if c.isalnum() or c == "-")
    return StoreSettings(
        kind="s3", endpoint=s3_endpoint, bucket=bucket, access_key="test", secret_key="test"
    )


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MQTT broker (mosquitto) on loopback for the session."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does)")
    port = free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: integration tests must run, not skip."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped:
        print(f"\nCI: {skipped} test(s) skipped; every test must run in CI")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

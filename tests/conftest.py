"""Shared fixtures: real parts (S3 endpoint from moto's server, MQTT broker) and real data."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from qcloop.logs import PROJECT_LOGGERS
from qcloop.settings import MqttSettings
from tests.services import MosquittoProcess, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
METAL_TAGS = ROOT / "tests" / "data" / "metal-tags"


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


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def project_logging_as_found() -> Iterator[None]:
    """Each test starts with the project's loggers as a fresh process has them.

    A CLI's ``main`` configures them (``qcloop.logs.configure_logging``: own stderr
    handler, no propagation); without this reset, whether ``caplog`` sees a module's
    records would depend on which test ran before.
    """
    yield
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


@pytest.fixture(autouse=True)
def agent_resizes_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process agents resize frames with their own numpy code, as on a box without a
    camera source: by default (``auto``) they would use OpenCV wherever it is loaded, and
    the platform's tests load it (ultralytics). Tests of the other resizers set it."""
    import edge_agent.resize

    monkeypatch.setattr(edge_agent.resize, "RESIZE", "numpy")


@pytest.fixture(scope="session")
def metal_tags() -> Iterator[Path]:
    """The real labelled sample in the repository (16 photos, 4 captures; see its README).

    Read-only: copy it before training on it (ultralytics writes caches beside labels).
    The session fails if a test wrote into it, as it would on a read-only data folder.
    """
    before = _snapshot(METAL_TAGS)
    yield METAL_TAGS
    after = _snapshot(METAL_TAGS)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert not changed, f"tests wrote into the read-only sample {METAL_TAGS}: {changed}"


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


@pytest.fixture
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
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"))
    broker.up()
    try:
        yield broker.url
    finally:
        broker.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: integration tests must run, not skip."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped:
        print(f"\nCI: {skipped} test(s) skipped; every test must run in CI")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""Fixtures of the edge agent tests: real ONNX models, real images, an MQTT listener, and
per-test mosquitto / moto processes (tests.services) that fault tests kill and restart."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qcloop.settings import StoreSettings
from tests.edge_agent.edge_helpers import Listener
from tests.services import MosquittoProcess, Service, free_port


@pytest.fixture(scope="session")
def offline_ultralytics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics set up offline; request it before importing ultralytics in a test."""
    from qcloop.yolo_env import configure_offline

    return configure_offline(tmp_path_factory.mktemp("ultralytics"))


@pytest.fixture(scope="session")
def yolo_onnx(offline_ultralytics: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained YOLOv8n exported to ONNX at imgsz 320 (ultralytics used in tests only)."""
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("yolo")

    cwd = os.getcwd()
    os.chdir(work)  # the export lands beside the (file-less) model: in cwd
    try:
        with warnings.catch_warnings():  # torch's TracerWarning: not an error of ours
            warnings.simplefilter("ignore")
            exported = Path(YOLO("yolov8n.yaml").export(format="onnx", imgsz=320)).resolve()
    finally:
        os.chdir(cwd)
    return exported


@pytest.fixture
def tag_images(metal_tags: Path, tmp_path: Path) -> list[Path]:
    """Three real metal-tag images copied out of the read-only data set."""
    out = tmp_path / "tags"
    out.mkdir()
    names = sorted(p.name for p in (metal_tags / "images").glob("*.jpg"))[:3]
    return [Path(shutil.copy(metal_tags / "images" / n, out / n)) for n in names]


@pytest.fixture
def listen(mqtt_url: str) -> Iterator[Callable[[str], Listener]]:
    """Factory of listeners, closed at the end of the test."""
    listeners: list[Listener] = []

    def _listen(topic: str) -> Listener:
        listeners.append(Listener(mqtt_url, topic))
        return listeners[-1]

    yield _listen
    for listener in listeners:
        listener.close()


class MotoProcess(Service):
    """Own S3 endpoint (moto's server process); its objects are lost when it is killed."""

    def __init__(self) -> None:
        self.port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        super().__init__("moto", [str(exe), "-H", "127.0.0.1", "-p", str(self.port)])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Start (again) on the same port."""
        self.start(self.port)

    def settings(self, bucket: str) -> StoreSettings:
        """Store settings of a bucket on this endpoint."""
        return StoreSettings(
            kind="s3", endpoint=self.endpoint, bucket=bucket, access_key="k", secret_key="s"
        )


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A mosquitto of this test only, started; killed at the end."""
    broker = MosquittoProcess(tmp_path)
    broker.up()
    yield broker
    broker.kill()


@pytest.fixture
def own_s3() -> Iterator[MotoProcess]:
    """A moto S3 server of this test only, NOT started (the test decides); killed at the end."""
    server = MotoProcess()
    yield server
    server.kill()

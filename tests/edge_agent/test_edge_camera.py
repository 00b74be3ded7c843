"""The OpenCV camera source, on a real video file (cv2.VideoCapture opens RTSP the same way)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.camera import CameraSource, redact
from edge_agent.config import EdgeConfig
from qcloop.errors import ConfigError
from qcloop.settings import StoreSettings
from qcloop.synthetic import SimulatedCamera
from tests.edge_agent.edge_helpers import make_config


def _video(path: Path, frames: int) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (450, 300))
    camera = SimulatedCamera(seed=3)
    for _ in range(frames):
        jpeg = np.frombuffer(camera.capture(), dtype=np.uint8)
        writer.write(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    writer.release()
    return path


def test_frames_until_the_stream_ends_then_none(tmp_path: Path) -> None:
    source = CameraSource(str(_video(tmp_path / "line.avi", 4)))
    frames = [source.next_frame(0.5) for _ in range(6)]
    got = [f for f in frames if f is not None]
    assert [f.name for f in got] == [f"camera-{n:08d}.jpg" for n in range(1, 5)]
    assert all(f.data[:2] == b"\xff\xd8" for f in got)  # JPEG
    assert frames[4] is None  # stream ended: reopened later, the loop goes on
    source.close()


def test_unavailable_stream_is_retried_not_raised(tmp_path: Path) -> None:
    source = CameraSource(str(tmp_path / "no-such-stream.avi"))
    assert source.next_frame(0.05) is None and source.next_frame(0.05) is None


def test_unavailable_stream_waits_longer_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a stream that cannot be opened
    source = CameraSource(str(tmp_path / "no-such-stream.avi"))
    # when it is tried three times
    with caplog.at_level(logging.ERROR, logger="edge_agent.camera"):
        for _ in range(3):
            source._retry_at = 0.0  # as if each wait had passed
            assert source.next_frame(0.0) is None
    # then each retry waits twice as long as the one before
    assert [r.retry_s for r in caplog.records] == [1.0, 2.0, 4.0]


def test_stream_credentials_stay_out_of_logs_and_config_dumps(tmp_path: Path) -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5/stream1") == "rtsp://admin:****@10.0.0.5/stream1"
    config = make_config(
        tmp_path,
        "mqtt://127.0.0.1:1",
        StoreSettings(path=tmp_path / "s"),
        "cam-1",
        source={"kind": "camera", "url": "rtsp://admin:s3cret@cam/stream1"},
    )
    assert "s3cret" not in str(config.masked()) and "s3cret" not in repr(config)
    with pytest.raises((ConfigError, ValueError), match=r"source.url"):
        EdgeConfig.model_validate({"device_id": "x", "source": {"kind": "camera"}})


@pytest.mark.integration
def test_agent_inspects_camera_frames(tmp_path: Path, mqtt_url: str, yolo_onnx: Path) -> None:
    video = _video(tmp_path / "line.avi", 5)
    config = make_config(
        tmp_path,
        mqtt_url,
        StoreSettings(path=tmp_path / "store"),
        "cam-2",
        source={"kind": "camera", "url": str(video)},
    )
    stats = Agent(config, initial_model=yolo_onnx).run(max_frames=5, timeout_s=30)
    assert stats.frames_inferred == 5

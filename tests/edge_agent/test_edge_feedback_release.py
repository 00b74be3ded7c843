"""Feedback upload (background, retried, never raising) and release handling (verify, refuse)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.backoff import Backoff
from edge_agent.config import EdgeConfig
from edge_agent.feedback import FeedbackUploader, build_sidecar
from edge_agent.fetch import fetch_model, model_filename, verify_file
from edge_agent.release import ModelLoader, release_thresholds
from edge_agent.spool import Spool
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from qcloop.contracts import Detection, ModelRef, RawImageSidecar, ReleaseMessage, Thresholds
from qcloop.errors import IntegrityError
from qcloop.settings import StoreSettings
from qcloop.storage import list_raw_images, open_store, sha256_bytes
from tests.edge_agent.edge_helpers import (
    YOLO_CLASSES,
    make_constant_model,
    release_for,
    release_keys,
    signed,
    wait_until,
)

REF = ModelRef(name="scratch-detector", version="3")


def png_bytes(shade: int = 50) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def sidecar_of(data: bytes) -> tuple[bytes, RawImageSidecar]:
    image = Image.open(io.BytesIO(data))
    detections = [Detection(label="scratch", score=0.3, box=(1, 2, 3, 4))]
    return data, build_sidecar(
        data, image, device_id="cam1", frame_name="/in/x.png", model=REF, predictions=detections
    )


def test_sidecar_describes_the_frame() -> None:
    data, sidecar = sidecar_of(png_bytes())
    assert sidecar.key == f"raw/{sha256_bytes(data)[:2]}/{sha256_bytes(data)}.png"
    assert (sidecar.content_type, sidecar.width, sidecar.height) == ("image/png", 40, 30)
    assert (sidecar.reason, sidecar.device_id, sidecar.source) == ("low_confidence", "cam1", "cam1")
    assert sidecar.original_name == "x.png" and sidecar.model == REF
    assert sidecar.predictions[0].score == 0.3


def uploader_on(store: LazyStore, tmp_path: Path, **kwargs: float) -> FeedbackUploader:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    return FeedbackUploader(store, Counters(), spool, **kwargs)


def test_uploads_are_content_addressed_and_idempotent(tmp_path: Path) -> None:
    # given an uploader on a local store
    store = LazyStore(StoreSettings(kind="local", path=tmp_path / "store"))
    uploader = uploader_on(store, tmp_path)
    counters = uploader._counters
    uploader.start()
    # when the same frame is sent twice and another once
    for data in (png_bytes(1), png_bytes(1), png_bytes(2)):
        uploader.submit(*sidecar_of(data))
    assert uploader.close(timeout=5) == 0
    # then two images and their sidecars are there, valid; the spool is empty
    sidecars = list_raw_images(open_store(store.settings))
    assert len(sidecars) == 2 and counters.get("feedback_images") == 2
    assert counters.get("errors") == 0 and uploader.spool.depth() == 0


def test_an_unreachable_store_is_counted_and_retried_never_raised(tmp_path: Path) -> None:
    # given a store that cannot be opened (its folder would be under a file)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = LazyStore(StoreSettings(kind="local", path=blocker / "store"))
    uploader = uploader_on(store, tmp_path, backoff_initial_s=0.01, backoff_max_s=0.02)
    counters = uploader._counters
    uploader.start()
    # when a frame is submitted
    started = time.monotonic()
    uploader.submit(*sidecar_of(png_bytes()))
    assert time.monotonic() - started < 0.1  # submit never waits for the store
    # then it is tried again and again, each failure counted, and kept on disk
    wait_until(lambda: counters.get("errors") >= 3, what="three failed attempts")
    assert uploader.close(timeout=0.1) == 1
    assert counters.get("feedback_images") == 0 and uploader.spool.depth() == 1


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.failed() == 0.5


def test_a_jittered_wait_is_drawn_in_the_upper_half_of_the_backoff() -> None:
    backoff = Backoff(8.0, 8.0)  # every delay 8 s
    waits = [backoff.failed_jittered() for _ in range(200)]
    assert all(4.0 <= w <= 8.0 for w in waits)
    assert max(waits) - min(waits) > 2.0  # drawn, not fixed


# ------------------------------------------------------------------ release


def constant_model(tmp_path: Path) -> Path:
    output = np.zeros((1, 84, 10), np.float32)
    return make_constant_model(tmp_path / "model.onnx", output)


def test_release_thresholds_override_the_config() -> None:
    defaults = Thresholds(confidence=0.3, iou=0.5, feedback_below=0.6)
    given = ReleaseMessage.from_json(
        release_for(Path(__file__), "f")
        .model_copy(update={"thresholds": Thresholds(feedback_below=0.2)})
        .to_json()
    )
    assert release_thresholds(defaults, given) == Thresholds(
        confidence=0.25, iou=0.7, feedback_below=0.2
    )
    partial = ReleaseMessage.model_validate(
        {**release_for(Path(__file__), "f").model_dump(), "thresholds": {"confidence": 0.7}}
    )
    assert release_thresholds(defaults, partial) == Thresholds(
        confidence=0.7, iou=0.5, feedback_below=0.6
    )


def test_fetch_verifies_and_caches(tmp_path: Path) -> None:
    model = constant_model(tmp_path)
    release = release_for(model, "f")
    store = LazyStore(StoreSettings(path=tmp_path / "store"))
    path = fetch_model(release, tmp_path / "models", store)
    assert path.name == model_filename(release) and path.read_bytes() == model.read_bytes()
    model.unlink()  # the source is gone: the verified copy is used
    assert fetch_model(release, tmp_path / "models", store) == path


def test_a_sha256_mismatch_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    model = constant_model(tmp_path)
    release = release_for(model, "f", sha256="0" * 64)
    with pytest.raises(IntegrityError, match="sha256"):
        fetch_model(release, tmp_path / "models", LazyStore(StoreSettings(path=tmp_path)))
    assert list((tmp_path / "models").rglob("*.onnx")) == []
    with pytest.raises(IntegrityError, match="bytes"):
        verify_file(model, 1, "0" * 64)


def loader_for(tmp_path: Path) -> tuple[ModelLoader, Counters]:
    config = EdgeConfig.model_validate(
        {
            "device_id": "cam1",
            "fleet": "f",
            "model_dir": tmp_path / "m",
            "source": {"kind": "simulated"},
            "release": {"public_key": release_keys()[1]},
        }
    )
    counters = Counters()
    loader = ModelLoader(config, LazyStore(config.store), counters)
    loader.start()
    return loader, counters


def test_loader_ignores_bad_payloads_and_loads_a_good_one(tmp_path: Path) -> None:
    # given a loader and a model
    loader, counters = loader_for(tmp_path)
    model = constant_model(tmp_path)
    # when it gets garbage, a contract-breaking JSON, another fleet's release, then a good one
    loader.submit(b"{not json")
    loader.submit(b'{"fleet": "f"}')
    loader.submit(signed(release_for(model, "other", class_names=YOLO_CLASSES)))
    good = signed(release_for(model, "f"))
    loader.submit(good)
    # then only the good one is offered, and the three others counted as errors
    assert loader.wait_ready(10)
    ready = loader.take_ready()
    assert ready is not None and ready.ref == ModelRef(name="scratch-detector", version="1")
    assert counters.get("errors") == 3
    # and the same release again is not reloaded once served
    loader.serving(ready)
    loader.submit(good)
    loader.close()
    assert loader.take_ready() is None


def test_loader_refuses_a_model_that_does_not_match_its_release(tmp_path: Path) -> None:
    loader, counters = loader_for(tmp_path)
    model = constant_model(tmp_path)
    loader.submit(signed(release_for(model, "f", class_names=["scratch"])))
    wait_until(lambda: counters.get("errors") == 1, what="the refusal")
    loader.close()
    assert loader.take_ready() is None

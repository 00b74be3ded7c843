"""Bounded by design: upload retries at the backoff's pace, frames refused before they are
decoded (pixels, bytes, empty, the one the agent died on), retention of the folders the
agent sets files aside in, and a spool that never takes the disk's last free bytes."""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.agent import Agent
from edge_agent.config import RetentionConfig
from edge_agent.errors import ImageError
from edge_agent.feedback import FeedbackUploader, build_sidecar
from edge_agent.guard import DecodeGuard
from edge_agent.inference import load_image
from edge_agent.retention import Retention, prune_folder, set_aside_folders
from edge_agent.sources import FolderSource, Frame
from edge_agent.spool import Spool, priority_of
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from qcloop.contracts import RawImageSidecar
from qcloop.settings import StoreSettings
from tests.edge_agent.edge_helpers import make_config, make_constant_model, wait_until


def png_bytes(shade: int = 50) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def sidecar_of(data: bytes) -> tuple[bytes, RawImageSidecar]:
    image = Image.open(io.BytesIO(data))
    sidecar = build_sidecar(
        data, image, device_id="cam1", frame_name="x.png", model=None, predictions=[]
    )
    return data, sidecar


def uploader_on(store: LazyStore, tmp_path: Path, **kwargs: float) -> FeedbackUploader:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    return FeedbackUploader(store, Counters(), spool, **kwargs)


def blank_model(tmp_path: Path) -> Path:
    """A fast model that finds nothing."""
    return make_constant_model(tmp_path / "blank.onnx", np.zeros((1, 84, 10), np.float32))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` but holds no pixel data (a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


# ------------------------------------------------------------------ upload retries


def test_retries_wait_their_backoff_whatever_the_frame_rate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given an uploader whose store fails, retrying every 0.4 s
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = LazyStore(StoreSettings(kind="local", path=blocker / "store"))
    uploader = uploader_on(store, tmp_path, backoff_initial_s=0.4, backoff_max_s=0.4)
    uploader.start()
    # when a fast camera spools a new frame every 10 ms, 200 frames
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="edge_agent.feedback"):
        for shade in range(200):
            uploader.submit(*sidecar_of(png_bytes(shade)))
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        uploader.close(timeout=0.0)
    # then the store was tried at the backoff's pace (once per 0.4 s), not once per frame
    attempts = [r for r in caplog.records if r.getMessage() == "feedback upload failed, retrying"]
    assert 2 <= len(attempts) <= elapsed / 0.4 + 2, (len(attempts), elapsed)


# ------------------------------------------------------------------ frames refused


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    # given a 9000x9000 PNG header (81 Mpixels, under Pillow's own bomb limit) and a real one
    claimed = png_claiming(9000, 9000)
    buffer = io.BytesIO()
    Image.new("L", (100, 50)).save(buffer, format="PNG")
    # when loaded with a 40 Mpixel limit: refused before any decoding, naming the size
    with pytest.raises(ImageError, match=r"9000x9000 = 81000000 pixels > source.max_pixels"):
        load_image(claimed, max_pixels=40_000_000)
    # then an image within the limit loads, one just over it does not
    assert load_image(buffer.getvalue(), max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageError, match="max_pixels 4999"):
        load_image(buffer.getvalue(), max_pixels=4999)


def test_a_file_that_stays_empty_is_handed_out_rejected_after_settling(inbox: Path) -> None:
    # given a zero-byte .jpg (a camera that crashed mid-write) and a 0.3 s settle time
    source = FolderSource(inbox, poll_interval_s=0.02, empty_settle_s=0.3)
    (inbox / "empty.jpg").write_bytes(b"")
    # when the source is asked for frames: nothing within the settle time, then the file
    started = time.monotonic()
    frame = source.next_frame(2.0)
    # then it comes with its reason, no bytes, and goes to rejected/ like a non-image
    assert frame is not None and frame.data == b"" and time.monotonic() - started >= 0.3
    assert frame.rejected is not None and "empty file" in frame.rejected
    source.reject(frame, frame.rejected)
    assert (inbox / "rejected" / "empty.jpg").is_file() and source.next_frame(0.5) is None


def test_a_file_over_the_size_limit_is_rejected_unread(inbox: Path) -> None:
    source = FolderSource(inbox, poll_interval_s=0.02, max_file_bytes=1000)
    (inbox / "huge.png").write_bytes(b"x" * 1001)
    (inbox / "small.png").write_bytes(b"x" * 1000)
    frames = {Path(f.name).name: f for f in (source.next_frame(1.0), source.next_frame(1.0)) if f}
    assert frames["huge.png"].data == b"" and frames["small.png"].rejected is None
    assert frames["huge.png"].rejected == "1001 bytes > source.max_file_bytes 1000"


@pytest.mark.faults
@pytest.mark.integration
def test_oversized_empty_and_crashing_frames_are_set_aside_with_their_reason(
    mqtt_url: str, metal_tags: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a hot folder with a PNG whose header says 9000x9000, a file over the size limit,
    # a .jpg that stays empty, the frame a previous run died decoding, and two good frames
    store = StoreSettings(kind="local", path=tmp_path / "store")
    inbox = tmp_path / "inbox"
    source = {"kind": "folder", "path": inbox, "poll_interval_s": 0.05, "empty_settle_s": 0.3}
    source |= {"max_file_bytes": 100_000}
    config = make_config(tmp_path, mqtt_url, store, "cam-big", source=source)
    inbox.mkdir()
    (inbox / "huge.png").write_bytes(png_claiming(9000, 9000))
    (inbox / "big.jpg").write_bytes(b"\xff" * 100_001)
    (inbox / "empty.jpg").write_bytes(b"")
    photos = sorted((metal_tags / "images").glob("*.jpg"))
    crashed = Path(shutil.copy(photos[0], inbox / "crashed.jpg"))
    config.state_dir.mkdir(parents=True)
    died = DecodeGuard.in_state_dir(config.state_dir).decoding(Frame("x", b"", crashed))
    died.__enter__()  # and never left: the process died inside the decoder
    for photo in photos[1:3]:
        shutil.copy(photo, inbox / photo.name)
    # when the agent runs (the previous run died inside the decoder: the marker is left)
    with caplog.at_level(logging.WARNING, logger="edge_agent.sources"):
        stats = Agent(config, initial_model=blank_model(tmp_path)).run(timeout_s=4)
    # then each is in rejected/, counted apart and logged with its reason; the rest inspected
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == [
        "big.jpg",
        "crashed.jpg",
        "empty.jpg",
        "huge.png",
    ]
    assert stats.frames_inferred == 2 and stats.frames_rejected == 4
    reasons = " | ".join(str(getattr(r, "error", "")) for r in caplog.records)
    for reason in ("max_pixels", "max_file_bytes", "empty file", "while decoding"):
        assert reason in reasons
    assert not (config.state_dir / "decoding").exists()


# ------------------------------------------------------------------ retention and disk


def aged(folder: Path, name: str, size: int, age_s: float) -> Path:
    """A file of ``size`` bytes in ``folder`` last written ``age_s`` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_retention_deletes_by_age_then_the_oldest_beyond_the_bytes(tmp_path: Path) -> None:
    # given a folder with a file older than a week and four recent ones of 100 bytes
    folder = tmp_path / "processed"
    aged(folder, "old.jpg", 100, 8 * 86400)
    for n in range(4):
        aged(folder, f"f{n}.jpg", 100, 60 * (4 - n))  # f0 oldest
    (folder / "sub").mkdir()
    # when pruned to 7 days and 250 bytes
    deleted = prune_folder(folder, 7 * 86400, 250, time.time())
    # then the old one goes for its age, f0 and f1 for the bytes; folders are left alone
    assert deleted == (3, 300)
    assert sorted(p.name for p in folder.iterdir()) == ["f2.jpg", "f3.jpg", "sub"]
    assert prune_folder(tmp_path / "missing", 1, 1, time.time()) == (0, 0)


def test_retention_runs_at_start_and_periodically_on_the_set_aside_folders(
    tmp_path: Path,
) -> None:
    # given the folders of a hot folder and a spool, an old file in rejected/
    source = FolderSource(tmp_path / "inbox")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    folders = set_aside_folders(source, spool.bad_dir)
    assert folders == [spool.bad_dir, tmp_path / "inbox/processed", tmp_path / "inbox/rejected"]
    old = aged(tmp_path / "inbox/rejected", "junk.txt", 10, 120)
    retention = Retention(folders, RetentionConfig(max_age_s=60, interval_s=0.1))
    # when it runs: the old file goes at start, one that ages later on a later pass
    retention.start()
    try:
        wait_until(lambda: not old.exists(), timeout=5, what="the start-up pass")
        later = aged(spool.bad_dir, "p1-broken.entry", 10, 120)
        wait_until(lambda: not later.exists(), timeout=5, what="a periodic pass")
    finally:
        retention.close()
    # then the defaults keep a week and 2 GiB per folder
    defaults = RetentionConfig()
    assert (defaults.max_age_s, defaults.max_bytes) == (7 * 86400, 2 * 1024**3)


def test_the_spool_never_takes_the_disks_last_free_bytes(tmp_path: Path) -> None:
    # given a disk with room for the reserve and two and a half entries (the spool's
    # own files use it too), and a spool whose byte limit alone would hold far more
    entry = len(png_bytes(1)) + len(sidecar_of(png_bytes(1))[1].to_json()) + 40
    capacity = 10_000 + entry * 5 // 2

    def free(folder: Path) -> int:
        used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        return capacity - used

    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, reserve_bytes=10_000, free_bytes=free)
    # when three frames are spooled
    dropped = []
    for shade in (1, 2, 3):
        data, sidecar = sidecar_of(png_bytes(shade))
        dropped.append([e.seq for e in spool.put(data, sidecar, priority_of(sidecar))])
    # then the third drops the oldest: the spool stays within free disk minus the reserve
    assert dropped == [[], [], [1]] and spool.depth() == 2
    assert free(tmp_path / "spool") >= 10_000

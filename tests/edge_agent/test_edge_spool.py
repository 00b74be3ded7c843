"""The on-disk spool: whole entries only, bounded by priority, resumed after a restart."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from edge_agent.feedback import FeedbackUploader, build_sidecar
from edge_agent.spool import Spool, decode, encode, priority_of
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from qcloop.contracts import CaptureReason, RawImageSidecar
from qcloop.settings import StoreSettings
from qcloop.storage import list_raw_images, open_store


def frame(shade: int, reason: CaptureReason = "low_confidence") -> tuple[bytes, RawImageSidecar]:
    buffer = io.BytesIO()
    Image.new("L", (64, 48), shade).save(buffer, format="PNG")
    data = buffer.getvalue()
    image = Image.open(io.BytesIO(data))
    sidecar = build_sidecar(
        data,
        image,
        device_id="cam1",
        frame_name=f"{shade}.png",
        model=None,
        predictions=[],
        reason=reason,
    )
    return data, sidecar


def put(spool: Spool, shade: int, reason: CaptureReason = "low_confidence") -> list[int]:
    data, sidecar = frame(shade, reason)
    return [e.priority for e in spool.put(data, sidecar, priority_of(sidecar))]


def test_an_entry_holds_image_and_sidecar_and_survives_a_restart(tmp_path: Path) -> None:
    # given a spool with two entries and a half-written temp file of a killed writer
    spool = Spool(tmp_path, max_bytes=1 << 20)
    put(spool, 1)
    put(spool, 2)
    (tmp_path / "tmp" / ".x.entry.123.tmp").write_bytes(b"half")
    # when it is opened again (a restart)
    again = Spool(tmp_path, max_bytes=1 << 20)
    # then both entries are there, in order, whole; the temp file is gone
    assert again.depth() == 2 and again.size() == spool.size()
    first = again.next()
    assert first is not None
    data, sidecar = again.read(first)
    expected_data, expected = frame(1)
    assert data == expected_data and sidecar.sha256 == expected.sha256
    assert sidecar.original_name == "1.png" and sidecar.key == expected.key
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_same_image_is_spooled_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    put(spool, 1)
    put(spool, 1)
    assert spool.depth() == 1


def test_a_full_spool_drops_lowest_priority_then_oldest(tmp_path: Path) -> None:
    # given a spool that holds three entries
    size = len(encode(*frame(1)))
    spool = Spool(tmp_path, max_bytes=3 * size + 10)
    assert put(spool, 1, "sampling") == []
    assert put(spool, 2, "low_confidence") == []
    assert put(spool, 3, "sampling") == []
    # when a low-confidence frame comes: the oldest sampling one goes
    assert put(spool, 4, "low_confidence") == [1]
    # and another: the other sampling one goes
    assert put(spool, 5, "low_confidence") == [1]
    # and a sampling frame now: less important than all, it is itself dropped
    assert put(spool, 6, "sampling") == [1]
    # and an operator verdict: the oldest low-confidence one goes
    assert put(spool, 7, "operator_verdict") == [2]
    assert spool.depth() == 3
    assert spool.next() is not None and spool.next().priority == 4  # type: ignore[union-attr]


def test_a_corrupted_entry_is_set_aside_and_the_rest_uploaded(tmp_path: Path) -> None:
    # given a spool (from a previous run) with one good and one damaged entry
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    put(spool, 1)
    put(spool, 2)
    damaged = max((tmp_path / "spool" / "entries").iterdir())
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    (tmp_path / "spool" / "entries" / "stray.txt").write_text("?")
    # when an uploader drains it
    store = LazyStore(StoreSettings(kind="local", path=tmp_path / "store"))
    counters = Counters()
    uploader = FeedbackUploader(store, counters, Spool(tmp_path / "spool", 1 << 20))
    uploader.start()
    assert uploader.close(timeout=5) == 0
    # then the good one is uploaded, the damaged one and the stray file are in bad/
    assert len(list_raw_images(open_store(store.settings))) == 1
    assert counters.get("feedback_images") == 1 and counters.get("errors") == 1
    assert sorted(p.name for p in (tmp_path / "spool" / "bad").iterdir()) == sorted(
        [damaged.name, "stray.txt"]
    )


def test_decode_refuses_what_is_not_an_entry() -> None:
    from qcloop.errors import IntegrityError

    with pytest.raises(IntegrityError, match="e1"):
        decode(b"hello", "e1")
    data, sidecar = frame(9)
    assert decode(encode(data, sidecar), "e2") == (data, sidecar)


@pytest.mark.integration
def test_sampling_sends_every_nth_confident_frame_at_low_priority(
    mqtt_url: str, tmp_path: Path
) -> None:
    import numpy as np

    from edge_agent.agent import Agent
    from tests.edge_agent.edge_helpers import make_config, make_constant_model

    # given a model sure of one scratch in every frame, and sampling of every 2nd frame
    output = np.array([[[160], [159.5], [64], [71], [0.875]]], np.float32)
    model = make_constant_model(tmp_path / "sure.onnx", output, names="{0: 'scratch'}")
    store = StoreSettings(kind="local", path=tmp_path / "store")
    source = {"kind": "simulated", "seed": 2, "interval_s": 0.0}
    feedback = {"sample_every": 2, "drain_timeout_s": 5.0}
    config = make_config(tmp_path, mqtt_url, store, "cam-sample", source=source, feedback=feedback)
    # when six frames are inferred
    stats = Agent(config, initial_model=model).run(max_frames=6, timeout_s=20)
    # then three went back, as samples (not low confidence)
    sidecars = list_raw_images(open_store(store))
    assert stats.feedback_images == 3 and [s.reason for s in sidecars] == ["sampling"] * 3
    assert priority_of(sidecars[0]) < priority_of(
        sidecars[0].model_copy(update={"reason": "low_confidence"})
    )


def test_a_higher_priority_replaces_the_spooled_entry_of_the_same_image(tmp_path: Path) -> None:
    # given a low-confidence frame waiting in the spool
    spool = Spool(tmp_path, max_bytes=1 << 20)
    put(spool, 7)
    # when an operator verdict on the same image comes, then a sampling one
    put(spool, 7, "operator_verdict")
    put(spool, 7, "sampling")
    # then one entry is left, the verdict's, also after a restart
    again = Spool(tmp_path, max_bytes=1 << 20)
    entry = again.next()
    assert again.depth() == 1 and entry is not None
    assert again.read(entry)[1].reason == "operator_verdict"

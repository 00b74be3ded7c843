"""Decoding on a second thread: order kept, errors kept with their frame, sizes followed."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent import agent as agent_module
from edge_agent.agent import Agent
from edge_agent.inference import Detector, InputPlan, prepare_input
from edge_agent.inflight import Outcome
from edge_agent.prefetch import Prefetched, Prefetcher, prefetch
from edge_agent.release import ServingModel
from edge_agent.sources import FolderSource, Frame
from qcloop.contracts import InferenceResult
from qcloop.mqtt import results_topic
from qcloop.settings import StoreSettings
from tests.edge_agent.edge_helpers import Listener, make_config, make_constant_model, wait_until


def jpeg(width: int = 64, height: int = 48, value: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, "JPEG")
    return buffer.getvalue()


class ListSource:
    """Hands out the given frames once each, recording on which thread it was asked."""

    def __init__(self, frames: list[Frame], fail_first: int = 0) -> None:
        self.frames = list(frames)
        self.threads: set[str] = set()
        self.fail_first = fail_first

    def next_frame(self, timeout: float) -> Frame | None:
        self.threads.add(threading.current_thread().name)
        if self.fail_first:
            self.fail_first -= 1
            raise OSError("camera unplugged")
        if not self.frames:
            time.sleep(timeout)
            return None
        return self.frames.pop(0)

    def done(self, frame: Frame) -> None:
        pass

    def reject(self, frame: Frame, reason: str) -> None:
        pass


def drain(prefetcher: Prefetcher, count: int, timeout_s: float = 10.0) -> list[Prefetched]:
    got: list[Prefetched] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        item = prefetcher.next(0.05)
        if item is not None:
            got.append(item)
    return got


@pytest.mark.parametrize("depth", [0, 2])
def test_frames_come_in_order_with_errors_kept_on_their_frame(depth: int) -> None:
    frames = [
        Frame("a.jpg", jpeg(value=1)),
        Frame("b.txt", b"not an image"),
        Frame("c.jpg", jpeg(value=3)),
    ]
    source = ListSource(frames)
    prefetcher = Prefetcher(source, lambda: InputPlan((32, 32)), depth=depth, tick_s=0.02)
    prefetcher.start()
    try:
        got = drain(prefetcher, 3)
    finally:
        prefetcher.close()
    assert [g.frame.name for g in got] == ["a.jpg", "b.txt", "c.jpg"]
    assert got[1].image is None
    assert "not a readable image" in (got[1].error or "")
    assert got[0].prepared is not None and got[0].prepared.tensor.shape == (1, 3, 32, 32)
    on_main = source.threads == {threading.current_thread().name}
    assert on_main is (depth == 0)  # depth > 0: the source is read on the prefetch thread


def test_prefetch_reads_at_most_depth_frames_ahead() -> None:
    source = ListSource([Frame(f"{i}.jpg", jpeg(value=i)) for i in range(10)])
    prefetcher = Prefetcher(source, lambda: InputPlan((32, 32)), depth=2, tick_s=0.02)
    prefetcher.start()
    try:
        time.sleep(0.5)
        # two in the queue and one read, waiting to be queued
        assert len(source.frames) == 10 - 3
    finally:
        prefetcher.close()


def test_a_failing_source_does_not_stop_the_prefetch_thread() -> None:
    source = ListSource([Frame("a.jpg", jpeg())], fail_first=2)
    prefetcher = Prefetcher(source, lambda: InputPlan((32, 32)), depth=1, tick_s=0.02)
    prefetcher.start()
    try:
        got = drain(prefetcher, 1)
    finally:
        prefetcher.close()
    assert [g.frame.name for g in got] == ["a.jpg"] and prefetcher.errors == 2


def test_without_a_model_size_the_frame_is_only_decoded_and_prepared_later() -> None:
    item = prefetch(Frame("a.jpg", jpeg(80, 40)), None)
    assert item.prepared is None and item.image is not None
    ready = item.for_model(InputPlan((64, 64)))
    expected = prepare_input(jpeg(80, 40), (64, 64))
    assert ready.plan == InputPlan((64, 64)) and ready.placement == expected.placement
    np.testing.assert_array_equal(ready.tensor, expected.tensor)


def test_a_frame_prepared_for_another_plan_is_prepared_again() -> None:
    item = prefetch(Frame("a.jpg", jpeg(80, 40)), InputPlan((32, 32)))
    assert item.for_model(InputPlan((32, 32))) is item.prepared
    assert item.for_model(InputPlan((64, 64))).tensor.shape == (1, 3, 64, 64)
    # same size, but a dynamic model's rect plan: an 80x40 frame on a 64x32 canvas
    assert item.for_model(InputPlan((64, 64), 32)).tensor.shape == (1, 3, 32, 64)


def test_detect_equals_prepare_then_infer(yolo_onnx: Path, tag_images: list[Path]) -> None:
    detector = Detector(yolo_onnx, confidence=0.01)
    for image in tag_images:
        prepared = prefetch(Frame(image.name, image.read_bytes()), detector.plan).prepared
        assert prepared is not None
        assert detector.infer(prepared) == detector.detect(image.read_bytes())
    with pytest.raises(ValueError, match="prepared for"):
        detector.infer(prepare_input(tag_images[0], (64, 64)))


def test_hot_folder_read_on_one_thread_and_done_on_another_hands_each_file_out_once(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    source = FolderSource(inbox, policy="move", poll_interval_s=0.01)
    for i in range(40):
        (inbox / f"{i:03d}.jpg").write_bytes(jpeg(value=i))
    prefetcher = Prefetcher(source, lambda: InputPlan((32, 32)), depth=2, tick_s=0.02)
    prefetcher.start()
    names: list[str] = []
    try:
        for item in drain(prefetcher, 40):
            names.append(Path(item.frame.name).name)
            source.done(item.frame)  # moves the file while the thread scans and reads
        time.sleep(0.3)
        assert prefetcher.next(0.1) is None  # nothing handed out twice
    finally:
        prefetcher.close()
    assert names == [f"{i:03d}.jpg" for i in range(40)]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == names


@pytest.mark.integration
@pytest.mark.parametrize(("depth", "workers"), [(0, 1), (2, 1), (2, 2), (1, 3)])
def test_the_agent_reads_frames_on_the_prefetch_thread_and_infers_each_in_order(
    depth: int, workers: int, mqtt_url: str, tmp_path: Path, listen: Callable[[str], Listener]
) -> None:
    # given a model with one box on every frame and six frames, one of them not an image
    output = np.zeros((1, 5, 4), np.float32)
    output[0, :, 0] = [160, 160, 40, 40, 0.9]
    model = make_constant_model(tmp_path / "m.onnx", output, names="{0: 'scratch'}")
    frames = [Frame(f"{i}.jpg", jpeg(value=i)) for i in range(6)]
    frames[3] = Frame("3.txt", b"not an image")
    source = ListSource(frames)
    store = StoreSettings(kind="local", path=tmp_path / "store")
    config = make_config(
        tmp_path,
        mqtt_url,
        store,
        f"cam-prefetch-{depth}-{workers}",
        prefetch_frames=depth,
        inference_workers=workers,
    )
    listener = listen(results_topic(config.device_id))
    # when the agent inspects them
    stats = Agent(config, source=source, initial_model=model).run(max_frames=5, timeout_s=30)
    # then five results come, in frame order, each with the box; the text file was rejected
    assert stats.frames_inferred == 5 and stats.errors == 1
    wait_until(lambda: len(listener.on(results_topic(config.device_id))) == 5)
    got = [InferenceResult.from_json(p) for p in listener.on(results_topic(config.device_id))]
    assert [r.image for r in got] == ["0.jpg", "1.jpg", "2.jpg", "4.jpg", "5.jpg"]
    assert all(len(r.detections) == 1 and r.detections[0].label == "scratch" for r in got)
    main_thread = threading.current_thread().name
    assert (source.threads == {"qcloop-prefetch"}) is (depth > 0)
    assert (source.threads == {main_thread}) is (depth == 0)


def test_after_a_swap_to_a_larger_input_a_frame_is_prepared_again(metal_tags: Path) -> None:
    # given a 1920-wide frame prefetched for a 320 model (decoded whole)
    image = Image.open(next((metal_tags / "images").glob("*.jpg"))).convert("RGB")
    out = io.BytesIO()
    image.resize((1920, 1280)).save(out, "JPEG", quality=90)
    item = prefetch(Frame("big.jpg", out.getvalue()), InputPlan((320, 320)))
    assert item.image is not None and item.image.width == 1920
    # when the next model takes 1280
    ready = item.for_model(InputPlan((1280, 1280)))
    # then the input is made for it from the whole frame
    np.testing.assert_array_equal(ready.tensor, prepare_input(out.getvalue(), (1280, 1280)).tensor)


def test_without_prepare_frames_are_only_decoded_for_the_workers_to_prepare() -> None:
    # given a prefetcher for several inference workers (they prepare their own frames)
    source = ListSource([Frame("a.jpg", jpeg(80, 40)), Frame("b.txt", b"not an image")])
    prefetcher = Prefetcher(
        source, lambda: InputPlan((32, 32)), depth=2, tick_s=0.02, prepare=False
    )
    prefetcher.start()
    try:
        got = drain(prefetcher, 2)
    finally:
        prefetcher.close()
    # then frames come decoded, not prepared, and a bad one still carries its error
    assert got[0].image is not None and got[0].prepared is None
    assert got[1].image is None and "not a readable image" in (got[1].error or "")
    ready = got[0].for_model(InputPlan((32, 32)))
    np.testing.assert_array_equal(ready.tensor, prepare_input(jpeg(80, 40), (32, 32)).tensor)


@pytest.mark.integration
def test_workers_that_prepare_their_own_frames_report_each_frame_s_own_boxes(
    metal_tags: Path,
    mqtt_url: str,
    tmp_path: Path,
    listen: Callable[[str], Listener],
) -> None:
    # given twelve real photos (three sizes) and a model whose box follows the pixels
    output = np.zeros((1, 5, 2), np.float32)
    output[0, :, 0] = [160, 160, 40, 40, 0.9]
    output[0, :, 1] = [60, 200, 30, 50, 0.8]
    gain = np.zeros_like(output)
    gain[0, :4] = [[200, -100], [100, 50], [50, 20], [20, 30]]
    model = make_constant_model(tmp_path / "m.onnx", output, names="{0: 'scratch'}", gain=gain)
    photos = sorted((metal_tags / "images").glob("*.jpg"))[:12]
    frames: list[Frame] = []
    for i, photo in enumerate(photos):
        image = Image.open(photo).convert("RGB")
        out = io.BytesIO()
        image.resize((image.width * (1 + i % 3), image.height * (1 + i % 3))).save(out, "JPEG")
        frames.append(Frame(f"{i:02d}.jpg", out.getvalue()))
    detector = Detector(model)
    expected = [detector.detect(f.data) for f in frames]
    assert len({e[0].box for e in expected}) == len(frames)  # each frame its own boxes

    def inspect(workers: int) -> list[InferenceResult]:
        config = make_config(
            tmp_path / f"w{workers}",
            mqtt_url,
            StoreSettings(kind="local", path=tmp_path / "store"),
            f"cam-own-frames-{workers}",
            inference_workers=workers,
            feedback={"enabled": False},
        )
        topic = results_topic(config.device_id)
        listener = listen(topic)
        agent = Agent(config, source=ListSource(frames), initial_model=model)
        assert agent.run(max_frames=len(frames), timeout_s=60).frames_inferred == len(frames)
        wait_until(lambda: len(listener.on(topic)) == len(frames))
        return [InferenceResult.from_json(p) for p in listener.on(topic)]

    # when the agent inspects them with one worker (the prefetch thread prepares) and
    # with three (each worker prepares its own frame in its own tensor)
    results = {workers: inspect(workers) for workers in (1, 3)}
    # then every result, with one worker or three, carries the boxes of its own frame
    for got in results.values():
        assert [r.image for r in got] == [f.name for f in frames]
        for result, boxes in zip(got, expected, strict=True):
            assert [d.label for d in result.detections] == [d.label for d in boxes]
            assert np.allclose(
                [d.box for d in result.detections], [d.box for d in boxes], atol=0.01
            ), result.image


def test_a_worker_whose_frame_overtook_an_older_one_goes_on_with_the_next(
    mqtt_url: str,
    tmp_path: Path,
    listen: Callable[[str], Listener],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given two workers, and a first frame whose model run hangs until released
    output = np.zeros((1, 5, 4), np.float32)
    output[0, :, 0] = [160, 160, 40, 40, 0.9]
    model = make_constant_model(tmp_path / "m.onnx", output, names="{0: 'scratch'}")
    frames = [Frame(f"{i}.jpg", jpeg(value=i)) for i in range(6)]
    release_first, inferred = threading.Event(), []
    real = agent_module.infer_timed

    def slow_first(item: Prefetched, serving: ServingModel) -> Outcome:
        if item.frame.name == "0.jpg":
            assert release_first.wait(20), "frames behind the first did not go on"
        outcome = real(item, serving)
        inferred.append(item.frame.name)
        if inferred == ["1.jpg", "2.jpg"]:  # the other worker got two frames meanwhile
            release_first.set()
        return outcome

    monkeypatch.setattr(agent_module, "infer_timed", slow_first)
    config = make_config(
        tmp_path,
        mqtt_url,
        StoreSettings(kind="local", path=tmp_path / "store"),
        "cam-overtake",
        inference_workers=2,
        feedback={"enabled": False},
    )
    topic = results_topic(config.device_id)
    listener = listen(topic)
    # when the agent inspects them
    stats = Agent(config, source=ListSource(frames), initial_model=model).run(
        max_frames=len(frames), timeout_s=30
    )
    # then the other worker inferred the next two frames while the first one hung (one
    # frame waits in the pool for a worker), and the results still left in frame order
    assert inferred[:3] == ["1.jpg", "2.jpg", "0.jpg"]
    assert stats.frames_inferred == len(frames)
    wait_until(lambda: len(listener.on(topic)) == len(frames))
    got = [InferenceResult.from_json(p).image for p in listener.on(topic)]
    assert got == [f.name for f in frames]

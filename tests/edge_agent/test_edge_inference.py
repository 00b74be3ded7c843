"""Pre/post-processing on exact numbers, and the Detector on real and constant ONNX models."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.errors import ImageError, ModelError
from edge_agent.inference import (
    PAD_VALUE,
    Detector,
    InputPlan,
    Letterbox,
    decode,
    letterbox,
    letterbox_input,
    load_image,
    parse_imgsz,
    parse_names,
    prepare_input,
    unletterbox,
)
from qcloop.boxes import batched_nms
from tests.edge_agent.edge_helpers import make_constant_model

# ------------------------------------------------------------------ letterbox


def test_letterbox_pads_grey_above_and_below_a_wide_image() -> None:
    # given a white 4x2 image
    image = Image.new("RGB", (4, 2), (255, 255, 255))
    # when it is letterboxed to 8x8
    canvas, placement = letterbox(image, (8, 8))
    # then it is scaled x2 and centred with two grey rows on each side
    assert placement == Letterbox(2.0, 2.0, 0, 2)
    assert canvas.shape == (8, 8, 3) and canvas.dtype == np.uint8
    assert (canvas[:2] == PAD_VALUE).all() and (canvas[6:] == PAD_VALUE).all()
    assert (canvas[2:6] == 255).all()


def test_letterbox_of_a_metal_tag_frame() -> None:
    # given a 450x300 frame (the size of the metal-tag images)
    image = Image.new("L", (450, 300), 7)
    # when it is letterboxed to 320x320
    canvas, placement = letterbox(image, (320, 320))
    # then it fills the width: 320x213, 53 grey rows above and 54 below
    assert placement == Letterbox(320 / 450, 213 / 300, 0, 53)
    assert (canvas[:53] == PAD_VALUE).all() and (canvas[266:] == PAD_VALUE).all()
    assert (canvas[53:266] == 7).all()


@pytest.mark.parametrize("stride", [0, 32])
@pytest.mark.parametrize(
    "shape", [(300, 450), (450, 300), (17, 33), (640, 640), (100, 1000), (333, 640)]
)
def test_letterbox_places_images_like_ultralytics(
    shape: tuple[int, int], stride: int, offline_ultralytics: Path
) -> None:
    from ultralytics.data.augment import LetterBox

    # given an image of this (height, width)
    height, width = shape
    # when both letterbox it to 320 (square, or on the smallest canvas of 32-multiples)
    canvas, placement = letterbox(Image.new("RGB", (width, height)), (320, 320), stride)
    params = LetterBox(new_shape=(320, 320), auto=stride > 0, stride=stride or 32).get_params(
        {"img": np.zeros((height, width, 3), np.uint8)}
    )
    # then size, offsets and canvas agree
    new_w, new_h = params["new_unpad"]
    assert (placement.pad_x, placement.pad_y) == (params["left"], params["top"])
    assert (round(placement.scale_x * width), round(placement.scale_y * height)) == (new_w, new_h)
    expected = (new_h + params["top"] + params["bottom"], new_w + params["left"] + params["right"])
    assert canvas.shape[:2] == expected


def test_rect_letterbox_of_a_metal_tag_frame() -> None:
    # a 450x300 frame for 480: scaled to 480x320, already 32-multiples, so no padding
    canvas, placement = letterbox(Image.new("RGB", (450, 300), (7, 7, 7)), (480, 480), 32)
    assert canvas.shape == (320, 480, 3) and (canvas == 7).all()
    assert (placement.pad_x, placement.pad_y) == (0, 0)
    # a 640x333 one: 480x250, padded to 480x256 (3 rows above, 3 below)
    canvas, placement = letterbox(Image.new("RGB", (640, 333), (7, 7, 7)), (480, 480), 32)
    assert canvas.shape == (256, 480, 3) and placement.pad_y == 3
    assert (canvas[:3] == PAD_VALUE).all() and (canvas[253:] == PAD_VALUE).all()


@pytest.mark.parametrize(
    ("frame", "stride"), [((450, 300), 0), ((300, 450), 0), ((640, 333), 32), ((451, 300), 0)]
)
def test_the_input_is_the_letterbox_canvas_scaled_border_included(
    frame: tuple[int, int], stride: int
) -> None:
    # given a frame with a gradient, padded above and below, left and right, or both
    pixels = np.arange(frame[0] * frame[1] * 3, dtype=np.uint32).reshape(frame[1], frame[0], 3)
    image = Image.fromarray((pixels % 251).astype(np.uint8))
    # when made the model's input
    tensor, placement = letterbox_input(image, (480, 480), stride)
    canvas, same = letterbox(image, (480, 480), stride)
    # then every value, the grey border's too, is the letterbox canvas's in [0, 1]
    expected = canvas.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255.0)
    assert placement == same and tensor.shape == expected.shape
    assert np.array_equal(tensor, expected)


def test_the_input_is_nchw_float_in_unit_range() -> None:
    canvas = np.full((8, 8, 3), 255, np.uint8)
    canvas[0, 0] = (0, 114, 255)
    tensor, _ = letterbox_input(Image.fromarray(canvas), (8, 8))
    assert tensor.shape == (1, 3, 8, 8) and tensor.dtype == np.float32
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([0.0, 114 / 255, 1.0])


# ------------------------------------------------------------------ decode / NMS


def test_decode_keeps_the_best_class_above_confidence_as_xyxy() -> None:
    # given output0 of a 2-class model with 4 anchors (rows: cx, cy, w, h, s0, s1)
    output = np.array(
        [
            [
                [50, 100, 5, 5],
                [50, 100, 5, 5],
                [20, 10, 2, 2],
                [10, 10, 2, 2],
                [0.9, 0.2, 0.1, 0.25],
                [0.1, 0.3, 0.2, 0.0],
            ]
        ],
        dtype=np.float32,
    )
    # when decoded at confidence 0.25 (strictly above, as ultralytics)
    boxes, scores, class_ids = decode(output, 0.25)
    # then anchors 0 (class 0) and 1 (class 1) remain, as corner boxes
    assert boxes.tolist() == [[40, 45, 60, 55], [95, 95, 105, 105]]
    assert scores.tolist() == pytest.approx([0.9, 0.3])
    assert class_ids.tolist() == [0, 1]


def test_decode_with_nothing_above_confidence_is_empty() -> None:
    boxes, scores, class_ids = decode(np.zeros((1, 5, 7), np.float32), 0.25)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and class_ids.shape == (0,)


def test_decode_and_nms_match_ultralytics_on_random_output(offline_ultralytics: Path) -> None:
    import torch
    from ultralytics.utils.nms import non_max_suppression

    # given a random output0 of a 3-class model with 500 anchors
    rng = np.random.default_rng(7)
    n = 500
    output = np.concatenate(
        [
            rng.uniform(0, 320, (1, 2, n)),  # cx, cy
            rng.uniform(5, 80, (1, 2, n)),  # w, h
            rng.uniform(0, 1, (1, 3, n)),  # class scores
        ],
        axis=1,
    ).astype(np.float32)
    # when both decode + NMS it
    boxes, scores, class_ids = decode(output, 0.25)
    keep = batched_nms(boxes, scores, class_ids, 0.45)
    theirs = non_max_suppression(torch.from_numpy(output), 0.25, 0.45, max_det=1000)[0].numpy()
    # then they keep the same boxes, scores and classes
    ours = np.column_stack([boxes[keep], scores[keep], class_ids[keep]])
    order = np.lexsort(theirs.T[::-1])
    assert len(ours) == len(theirs) > 10
    np.testing.assert_allclose(ours[np.lexsort(ours.T[::-1])], theirs[order], atol=1e-3)


def test_unletterbox_maps_back_and_clips() -> None:
    # given boxes in input pixels of an image placed at scale 0.5, offset (10, 20)
    placement = Letterbox(0.5, 0.5, 10, 20)
    boxes = np.array([[10, 20, 60, 70], [0, 0, 300, 300]], np.float32)
    # when mapped back to the 200x150 image
    mapped = unletterbox(boxes, placement, 200, 150)
    # then the first is exact and the second clipped to the image
    assert mapped.tolist() == [[0, 0, 100, 100], [0, 0, 200, 150]]


def test_metadata_parsers() -> None:
    assert parse_names("{0: 'scratch', 1: 'dent'}") == ["scratch", "dent"]
    assert parse_names("['a', 'b']") == ["a", "b"]
    assert parse_names(None) is None
    assert parse_imgsz("[320, 480]") == (320, 480)
    assert parse_imgsz("640") == (640, 640)


# ------------------------------------------------------------------ Detector


def _one_box_output() -> np.ndarray:
    # anchor 0: a box that maps to (180, 100, 270, 200) in a 450x300 image;
    # anchor 1: a near duplicate (suppressed); anchor 2: below confidence
    return np.array(
        [[[160, 161, 10], [159.5, 159.5, 10], [64, 64, 5], [71, 71, 5], [0.9, 0.8, 0.1]]],
        dtype=np.float32,
    )


@pytest.fixture
def constant_model(tmp_path: Path) -> Path:
    return make_constant_model(tmp_path / "c.onnx", _one_box_output(), names="{0: 'scratch'}")


def test_detector_returns_boxes_in_the_image_pixels(constant_model: Path, tmp_path: Path) -> None:
    # given a 450x300 frame as a file, bytes and a PIL image
    frame = tmp_path / "frame.png"
    Image.new("L", (450, 300), 90).save(frame)
    detector = Detector(constant_model)
    # when detected
    results = [detector.detect(x) for x in (frame, frame.read_bytes(), Image.open(frame))]
    # then one scratch at its exact place in the frame, whatever the input type
    for detections in results:
        assert len(detections) == 1
        assert detections[0].label == "scratch"
        assert detections[0].score == pytest.approx(0.9)
        assert detections[0].box == pytest.approx((180, 100, 270, 200), abs=1e-3)


def test_a_dynamic_model_gets_the_smallest_canvas_and_boxes_map_back(tmp_path: Path) -> None:
    # given the same constant output from a model with free height and width
    path = make_constant_model(tmp_path / "d.onnx", _one_box_output(), dynamic=True)
    frame = Image.new("L", (450, 300), 90)
    # when a 450x300 frame is detected with the default (rect) plan
    detector = Detector(path)
    assert detector.dynamic and detector.plan == InputPlan((320, 320), 32)
    prepared = prepare_input(frame, detector.plan)
    # then it ran on a 320x224 canvas (213 rows + 11 of padding), 5 rows above
    assert prepared.tensor.shape == (1, 3, 224, 320) and prepared.placement.pad_y == 5
    # and the box maps back through that placement, not the square one
    box = detector.infer(prepared)[0].box
    assert box == pytest.approx((180, 119 / 0.71, 270, 190 / 0.71), abs=1e-3)  # 213/300 = 0.71
    # while the square plan (rect off) gives the static model's numbers
    square = Detector(path, rect=False)
    assert square.plan == InputPlan((320, 320), 0)
    assert square.detect(frame)[0].box == pytest.approx((180, 100, 270, 200), abs=1e-3)
    with pytest.raises(ValueError, match="prepared for"):
        square.infer(prepared)


def test_a_dynamic_model_without_a_known_size_is_refused(tmp_path: Path) -> None:
    path = make_constant_model(tmp_path / "d.onnx", _one_box_output(), dynamic=True)
    import onnx

    model = onnx.load(path)
    del model.metadata_props[:]  # no imgsz in the metadata
    onnx.save(model, path)
    with pytest.raises(ModelError, match="input size unknown"):
        Detector(path, class_names=["scratch"])
    assert Detector(path, class_names=["scratch"], imgsz=256).plan == InputPlan((256, 256), 32)


def test_detector_thresholds_and_names_from_arguments(constant_model: Path) -> None:
    detector = Detector(constant_model, class_names=["dent"], imgsz=320, confidence=0.05)
    detections = detector.detect(Image.new("RGB", (450, 300)))
    assert [d.label for d in detections] == ["dent", "dent"]
    assert detections[1].score == pytest.approx(0.1)
    assert detector.detect(Image.new("RGB", (450, 300)), confidence=0.95) == []


def test_detector_refuses_what_does_not_match_the_model(constant_model: Path) -> None:
    with pytest.raises(ModelError, match="1 classes, 2 class names"):
        Detector(constant_model, class_names=["a", "b"])
    with pytest.raises(ModelError, match="imgsz"):
        Detector(constant_model, imgsz=480)


def test_detector_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX"):
        Detector(bogus)
    with pytest.raises(ModelError, match="no such model"):
        Detector(tmp_path / "missing.onnx")


def test_load_image_names_an_unreadable_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes.jpg: not a readable image"):
        load_image(text)


def test_detector_on_the_exported_yolov8n(yolo_onnx: Path, metal_tags: Path) -> None:
    # given the exported model and a real frame
    frame = sorted((metal_tags / "images").glob("*.jpg"))[0]
    detector = Detector(yolo_onnx, threads=2)
    detector.warmup()
    # then imgsz and names come from its metadata
    assert detector.imgsz == (320, 320)
    assert len(detector.names) == 80
    # and even at confidence 0 every box lies inside the frame, best first
    detections = detector.detect(frame, confidence=0.0)
    assert 0 < len(detections) <= 300
    with Image.open(frame) as image:
        width, height = image.size
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("stride", [0, 32])
@pytest.mark.parametrize("imgsz", [160, 320, 480, 640])
@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_the_model_input_is_ultralytics_to_the_bit(
    metal_tags: Path,
    offline_ultralytics: Path,
    monkeypatch: pytest.MonkeyPatch,
    imgsz: int,
    stride: int,
    backend: str,
) -> None:
    import cv2
    from ultralytics.data.augment import LetterBox

    import edge_agent.resize as resize

    monkeypatch.setattr(resize, "RESIZE", backend)
    boxer = LetterBox(new_shape=(imgsz, imgsz), auto=stride > 0, stride=stride or 32)
    for frame in sorted((metal_tags / "images").glob("*.jpg"))[:4]:
        # given a real photo, shrunk or enlarged, and on a square or a rect canvas
        # when the agent prepares it, and ultralytics' predictor letterboxes and scales it
        ours = prepare_input(frame, InputPlan((imgsz, imgsz), stride)).tensor
        bgr = boxer(image=cv2.imread(str(frame)))
        theirs = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))[None]
        # then the model sees the same numbers
        assert ours.shape == theirs.shape
        assert np.array_equal(ours, theirs.astype(np.float32) / np.float32(255.0))


def test_a_large_camera_frame_is_resized_as_opencv_does(metal_tags: Path) -> None:
    import cv2

    from edge_agent.resize import resize_linear

    # given a 1920x1280 frame (a camera's, not the tags' 450x300) and odd sizes
    pixels = np.asarray(Image.open(io.BytesIO(big_jpeg(metal_tags))).convert("RGB"))
    for size in [(480, 320), (320, 213), (17, 11), (1000, 667), (1920, 1280), (2500, 1667)]:
        # then numpy's resize is OpenCV's INTER_LINEAR, pixel for pixel
        expected = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_linear(pixels, size), expected), size


def test_opencv_resizes_where_loaded_already_or_asked_for_and_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edge_agent.resize as resize

    # by default (auto) OpenCV resizes only where the process has it loaded already
    monkeypatch.delenv("QCLOOP_EDGE_RESIZE", raising=False)
    assert resize.resize_backend() == "auto"
    monkeypatch.setattr(resize, "RESIZE", "auto")
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "cv2", None)  # not loaded (nor installed)
        assert resize._opencv() is None and resize.resizer() == "numpy"
    import cv2  # loaded (by a camera source, say)

    assert resize._opencv() is cv2 and resize.resizer() == "opencv"
    # numpy is never overridden; opencv is numpy where OpenCV is not installed
    monkeypatch.setattr(resize, "RESIZE", "numpy")
    assert resize._opencv() is None
    monkeypatch.setenv("QCLOOP_EDGE_RESIZE", "opencv")
    assert resize.resize_backend() == "opencv"
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert resize.resize_backend() == "numpy"


def test_an_unknown_resize_setting_is_named_and_left_to_auto(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_agent.resize import resize_backend

    monkeypatch.setenv("QCLOOP_EDGE_RESIZE", "cv2")
    with caplog.at_level("WARNING", logger="edge_agent.resize"):
        assert resize_backend() == "auto"
    assert "QCLOOP_EDGE_RESIZE is not one of auto, numpy, opencv" in caplog.text


def big_jpeg(metal_tags: Path, width: int = 1920, orientation: int = 1) -> bytes:
    """A real tag frame scaled to camera size, optionally with an EXIF orientation."""
    image = Image.open(next((metal_tags / "images").glob("*.jpg"))).convert("RGB")
    scaled = image.resize((width, round(image.height * width / image.width)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    scaled.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_decoded_whole_and_turned(metal_tags: Path, orientation: int) -> None:
    # given a 1920x1280 camera frame (6: stored turned, shown 1280x1920)
    data = big_jpeg(metal_tags, orientation=orientation)
    # when it is decoded for a 480 model
    image = load_image(data)
    prepared = prepare_input(data, (480, 480))
    # then it is decoded whole (as ultralytics does) and turned upright
    assert image.size == ((1920, 1280) if orientation == 1 else (1280, 1920))
    assert (prepared.width, prepared.height) == image.size


def test_a_thread_reuses_its_input_tensor_and_threads_do_not_share_one(
    metal_tags: Path,
) -> None:
    import threading

    photos = sorted((metal_tags / "images").glob("*.jpg"))[:2]
    plan = InputPlan((480, 480), 32)
    fresh = [prepare_input(p, plan).tensor for p in photos]
    # when one thread prepares two frames with reuse
    first = prepare_input(photos[0], plan, reuse=True).tensor
    assert np.array_equal(first, fresh[0])
    second = prepare_input(photos[1], plan, reuse=True).tensor
    # then the second is made in the same tensor (the first frame's input is gone)
    assert second is first and np.array_equal(second, fresh[1])
    # and another thread has its own
    other: list[np.ndarray] = []
    worker = threading.Thread(
        target=lambda: other.append(prepare_input(photos[0], plan, reuse=True).tensor)
    )
    worker.start()
    worker.join()
    assert other[0] is not second and np.array_equal(other[0], fresh[0])
    assert np.array_equal(second, fresh[1])  # untouched by the other thread
    # without reuse each frame has its own tensor
    assert prepare_input(photos[0], plan).tensor is not prepare_input(photos[0], plan).tensor


def test_resized_into_the_thread_s_buffer_is_still_opencv_s_pixels(metal_tags: Path) -> None:
    import cv2

    from edge_agent.resize import resize_linear

    pixels = np.asarray(Image.open(io.BytesIO(big_jpeg(metal_tags))).convert("RGB"))
    kept = resize_linear(pixels, (480, 320))
    for size in [(480, 320), (640, 427), (480, 320), (17, 11)]:
        expected = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_linear(pixels, size, reuse=True), expected), size
    # a result made without reuse is the caller's: later calls leave it as it was
    assert np.array_equal(kept, cv2.resize(pixels, (480, 320), interpolation=cv2.INTER_LINEAR))

"""YOLOv8 detection on onnxruntime with numpy and Pillow only (no torch, no ultralytics).

The steps are pure functions, tested on exact numbers; ``Detector`` chains them
(``batched_nms`` is the core's, ``qcloop.boxes``):

    load_image -> letterbox_input -> session.run -> decode -> batched_nms
               -> unletterbox -> Detection

A static export is fed its fixed input size. A dynamic one (free height and width)
is fed, by default, the smallest canvas of stride multiples around the scaled
frame, as ultralytics' ``rect`` does: a 3:2 frame for 480 runs at 480x320, a third
less work than 480x480.

``output0`` of a YOLOv8 detect export is ``[1, 4 + nc, anchors]``: ``cx, cy, w, h``
in input pixels, then one score per class (no objectness column).
"""

from __future__ import annotations

import ast
import io
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from edge_agent.errors import ImageError, ModelError
from edge_agent.pixels import frame_pixels
from edge_agent.resize import resize_frame, thread_buffer
from qcloop.boxes import batched_nms
from qcloop.contracts import Detection
from qcloop.params import CONFIDENCE, NMS_IOU
from qcloop.yolo import letterbox_shape

PAD_VALUE = 114  # the grey ultralytics pads with
PAD_INPUT = np.float32(PAD_VALUE) / np.float32(255.0)  # that grey in the model's input
ORIENTATION_TAG = 0x0112  # EXIF

ImageInput = Image.Image | bytes | str | Path


class InputPlan(NamedTuple):
    """How frames are fitted to a model: scaled into ``imgsz`` (height, width), then
    padded to exactly ``imgsz`` (``stride`` 0) or to the next multiples of ``stride``."""

    imgsz: tuple[int, int]
    stride: int = 0


class Letterbox(NamedTuple):
    """How an image was placed into the model input: scale per axis, then offset."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


def load_image(source: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """Decode bytes or a file (EXIF orientation applied); ``ImageError`` if unreadable.

    Decoded whole, as ultralytics does (a JPEG decoded at a reduced scale would give
    the model other pixels than those it was scored on). An image of more than
    ``max_pixels`` is refused from its header, before anything is decoded.
    """
    if isinstance(source, Image.Image):
        return source
    name = "bytes" if isinstance(source, bytes) else str(source)
    try:
        image: Image.Image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if max_pixels is not None and image.width * image.height > max_pixels:
            pixels = f"{image.width}x{image.height} = {image.width * image.height} pixels"
            raise ImageError(f"{name}: {pixels} > source.max_pixels {max_pixels}")
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
        image.load()
    except ImageError:
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, ...
        raise ImageError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    if orientation != 1:
        rotated = ImageOps.exif_transpose(image)
        rotated.format, image = image.format, rotated  # .format names the feedback's file type
    return image


def _placed(
    image: Image.Image, size: tuple[int, int], stride: int, reuse: bool = False
) -> tuple[np.ndarray, tuple[int, int], Letterbox]:
    """The frame's RGB pixels resized for the canvas, the canvas (width, height), the placement
    (``reuse``: the resized pixels in this thread's buffer, ``resize_frame``).

    Computed like ultralytics' ``LetterBox`` (centred, scale-up allowed) on the frame's
    own size, resized like it (OpenCV's bilinear, ``edge_agent.resize``): the same pixels.
    """
    source_w, source_h = image.size
    (new_w, new_h), canvas = letterbox_shape((source_w, source_h), size, stride)
    left = round((canvas[0] - new_w) / 2 - 0.1)
    top = round((canvas[1] - new_h) / 2 - 0.1)
    pixels = frame_pixels(image)  # in place where Pillow allows: RGB, or RGBX
    if image.size != (new_w, new_h):
        pixels = resize_frame(pixels, (new_w, new_h), reuse=reuse)
    return pixels[..., :3], canvas, Letterbox(new_w / source_w, new_h / source_h, left, top)


def letterbox(
    image: Image.Image, size: tuple[int, int], stride: int = 0
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio into ``size`` (height, width) and pad with grey 114.

    The canvas is ``size``, or with ``stride`` the smallest multiple of it around
    the resized image in each direction (ultralytics' ``auto``/``rect``). Returns
    the HxWx3 uint8 RGB canvas and the placement.
    """
    pixels, (width, height), placement = _placed(image, size, stride)
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    new_h, new_w = pixels.shape[:2]
    canvas[placement.pad_y : placement.pad_y + new_h, placement.pad_x : placement.pad_x + new_w] = (
        pixels
    )
    return canvas, placement


def letterbox_input(
    image: Image.Image, size: tuple[int, int], stride: int = 0, *, reuse: bool = False
) -> tuple[np.ndarray, Letterbox]:
    """``letterbox``'s canvas as the model's input, in one pass over the pixels: the resized
    frame is scaled to [0, 1] straight into the 1x3xHxW float32 tensor, whose border
    alone is filled with the grey. With ``reuse`` the tensor is this thread's
    (``thread_tensor``): for a frame inferred on this thread before it prepares another."""
    pixels, canvas, placement = _placed(image, size, stride, reuse)
    out = thread_tensor(canvas) if reuse else None
    return input_tensor(pixels, canvas, placement, out), placement


def thread_tensor(canvas: tuple[int, int]) -> np.ndarray:
    """This thread's 1x3xHxW float32 input for a (width, height) ``canvas``, kept from frame
    to frame (``edge_agent.resize.thread_buffer``; measured: ~0.5 ms a frame less with two
    workers on two cores)."""
    width, height = canvas
    return thread_buffer("input", (1, 3, height, width), np.float32)


def input_tensor(
    pixels: np.ndarray,
    canvas: tuple[int, int],
    placement: Letterbox,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The 1x3xHxW float32 input of a (width, height) ``canvas`` (in ``out`` if given): the
    resized frame's ``pixels`` scaled to [0, 1] at ``placement``, the border grey."""
    width, height = canvas
    tensor = np.empty((1, 3, height, width), dtype=np.float32) if out is None else out
    new_h, new_w = pixels.shape[:2]
    top, left = placement.pad_y, placement.pad_x
    tensor[0, :, :top] = PAD_INPUT  # only the border is grey: the frame fills the rest
    tensor[0, :, top + new_h :] = PAD_INPUT
    tensor[0, :, top : top + new_h, :left] = PAD_INPUT
    tensor[0, :, top : top + new_h, left + new_w :] = PAD_INPUT
    inside = tensor[0, :, top : top + new_h, left : left + new_w]
    np.divide(pixels.transpose(2, 0, 1), np.float32(255.0), out=inside, dtype=np.float32)
    return tensor


class ModelInput(NamedTuple):
    """A frame ready for a model fed by ``plan``: tensor, placement, source size."""

    tensor: np.ndarray
    placement: Letterbox
    width: int
    height: int
    plan: InputPlan


def prepare_input(
    image: ImageInput, plan: InputPlan | tuple[int, int], *, reuse: bool = False
) -> ModelInput:
    """Decode (if bytes/path), letterbox and normalise: all the work before ``session.run``.

    ``plan`` is a model's ``InputPlan`` or just an input size (height, width).
    Pure and thread-safe, so the agent runs it on its inference workers. With ``reuse``
    the tensor is this thread's (``thread_tensor``), overwritten by the next frame this
    thread prepares with ``reuse``: for a frame inferred right away, on this thread.
    """
    plan = plan if isinstance(plan, InputPlan) else InputPlan(plan)
    picture = load_image(image)
    tensor, placement = letterbox_input(picture, plan.imgsz, plan.stride, reuse=reuse)
    return ModelInput(tensor, placement, *picture.size, plan)


def decode(output: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[1, 4+nc, anchors]`` -> (xyxy boxes, best-class scores, class ids) above ``confidence``."""
    pred = output[0] if output.ndim == 3 else output  # (4 + nc) x anchors
    class_scores = pred[4:]
    class_ids = class_scores.argmax(axis=0)
    scores = np.take_along_axis(class_scores, class_ids[None], axis=0)[0]
    keep = scores > confidence  # filter first: only the few kept anchors are converted
    cx, cy, w, h = pred[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes.astype(np.float32), scores[keep].astype(np.float32), class_ids[keep]


def unletterbox(boxes: np.ndarray, placement: Letterbox, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes from model input pixels back to the image's own, clipped to it."""
    out = boxes.astype(np.float64)  # a new array: the caller's boxes stay as they are
    out[:, [0, 2]] = (out[:, [0, 2]] - placement.pad_x) / placement.scale_x
    out[:, [1, 3]] = (out[:, [1, 3]] - placement.pad_y) / placement.scale_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def parse_names(value: str | None) -> list[str] | None:
    """Class names from ultralytics metadata (``"{0: 'scratch'}"``) or None."""
    if not value:
        return None
    names = ast.literal_eval(value)
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def parse_imgsz(value: str | None) -> tuple[int, int] | None:
    """(height, width) from ultralytics metadata (``"[320, 320]"`` or ``"320"``) or None."""
    if not value:
        return None
    size = ast.literal_eval(value)
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


class Detector:
    """A YOLOv8 ONNX model on onnxruntime (CPU); ``detect`` returns ``Detection``s.

    ``class_names`` and ``imgsz`` come from the arguments (a release message) or
    else from the model's metadata; a conflict with the model raises ``ModelError``.
    With ``rect`` (the default) a model with free input height and width gets each
    frame on the smallest canvas of stride multiples (``plan``); else on ``imgsz``.
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        class_names: Sequence[str] | None = None,
        imgsz: int | None = None,
        confidence: float = CONFIDENCE,
        iou: float = NMS_IOU,
        threads: int = 1,
        max_detections: int = 300,
        rect: bool = True,
    ) -> None:
        self.path = Path(model_path)
        self.confidence = confidence
        self.iou = iou
        self.max_detections = max_detections
        self._session = _open_session(self.path, threads)
        meta = self._session.get_modelmeta().custom_metadata_map
        if meta.get("end2end") == "True":
            raise ModelError(f"{self.path}: end-to-end (NMS inside) exports are not supported")
        self.input_name = self._session.get_inputs()[0].name
        fixed = self._session.get_inputs()[0].shape[2:]
        self.dynamic = not all(isinstance(d, int) for d in fixed)
        static = None if self.dynamic else (int(fixed[0]), int(fixed[1]))
        self.imgsz = self._resolve_imgsz(imgsz, meta.get("imgsz"), static)
        self.names = self._resolve_names(class_names, meta.get("names"))
        stride = _stride(meta.get("stride")) if rect and self.dynamic else 0
        self.plan = InputPlan(self.imgsz, stride)

    def __repr__(self) -> str:
        return (
            f"Detector({str(self.path)!r}, imgsz={self.imgsz}, stride={self.plan.stride}, "
            f"classes={len(self.names)})"
        )

    def _resolve_imgsz(
        self, imgsz: int | None, meta_value: str | None, static: tuple[int, int] | None
    ) -> tuple[int, int]:
        wanted = (imgsz, imgsz) if imgsz else parse_imgsz(meta_value) or static
        if wanted is None:
            raise ModelError(f"{self.path}: input size unknown: give imgsz (release input_size)")
        if static and static != wanted:
            raise ModelError(
                f"{self.path}: input is {list(static)}, but imgsz {list(wanted)} given"
            )
        return wanted

    def _resolve_names(self, given: Sequence[str] | None, meta_value: str | None) -> list[str]:
        channels = self._session.get_outputs()[0].shape[1]
        names = list(given) if given else parse_names(meta_value)
        if names is None and isinstance(channels, int):
            names = [f"class{i}" for i in range(channels - 4)]
        if not names:
            raise ModelError(f"{self.path}: class names unknown: give class_names")
        if isinstance(channels, int) and channels != 4 + len(names):
            raise ModelError(
                f"{self.path}: output has {channels - 4} classes, {len(names)} class names given"
            )
        return names

    def warmup(self) -> None:
        """Run once on a blank input: proves the model runs before it is trusted."""
        blank = Image.new("RGB", (self.imgsz[1], self.imgsz[0]), (PAD_VALUE,) * 3)
        output = self.raw_output(letterbox_input(blank, self.imgsz)[0])
        if output.ndim != 3 or output.shape[1] != 4 + len(self.names):
            raise ModelError(f"{self.path}: output0 {list(output.shape)} is not [1, 4+nc, anchors]")

    def raw_output(self, tensor: np.ndarray) -> np.ndarray:
        """``output0`` for one input tensor."""
        try:
            return np.asarray(self._session.run(None, {self.input_name: tensor})[0])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{self.path}: inference failed: {exc}") from None

    def detect(
        self, image: ImageInput, *, confidence: float | None = None, iou: float | None = None
    ) -> list[Detection]:
        """Detections in the pixels of ``image``, best score first."""
        prepared = prepare_input(image, self.plan, reuse=True)  # inferred right here
        return self.infer(prepared, confidence=confidence, iou=iou)

    def infer(
        self, prepared: ModelInput, *, confidence: float | None = None, iou: float | None = None
    ) -> list[Detection]:
        """Detections for a frame ``prepare_input`` made ready (for this model's plan)."""
        if prepared.plan != self.plan:
            raise ValueError(f"input prepared for {prepared.plan}, model takes {self.plan}")
        output = self.raw_output(prepared.tensor)
        conf = self.confidence if confidence is None else confidence
        boxes, scores, class_ids = decode(output, conf)
        keep = batched_nms(boxes, scores, class_ids, self.iou if iou is None else iou)
        keep = keep[: self.max_detections]
        mapped = unletterbox(boxes[keep], prepared.placement, prepared.width, prepared.height)
        return [
            Detection(
                label=self.names[int(c)],
                score=float(min(max(s, 0.0), 1.0)),
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            )
            for b, s, c in zip(mapped, scores[keep], class_ids[keep], strict=True)
        ]


def _stride(value: str | None) -> int:
    """The model's largest stride from its metadata (ultralytics writes ``"32"``), else 32."""
    try:
        stride = int(ast.literal_eval(value)) if value else 32
    except (ValueError, SyntaxError, TypeError):
        return 32
    return stride if stride > 0 else 32


def _open_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the agent logs its own
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, ...: not typed in onnxruntime's API
        raise ModelError(f"{path}: not a loadable ONNX model ({exc})") from None

"""Static INT8 quantisation of a YOLOv8 ONNX for the edge; stem and detection head stay float.

Quantising the whole graph scores mAP 0 (docs/performance.md): box coordinates and
class scores are concatenated in one tensor whose ranges differ by orders of
magnitude. So the backbone, the neck and the first convolutions of the head
branches are quantised (QDQ, per-channel weights), while the last convolution
of each branch, the DFL and the decoding stay float. The stem (the first
convolution, on the raw image) stays float too: quantised, it cost models
trained on the GPU 0.12-0.13 mAP50-95 on the metal tags (docs/performance.md), for
about 1% of the compute. Calibration uses real training images, preprocessed
exactly as at inference (letterbox).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np

from qcloop.contracts import ModelRecord
from qcloop.errors import PipelineError
from qcloop.settings import Settings
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)

# quantised: /model.22/cv2.0/cv2.0.0/..., /model.22/cv3.1/cv3.1.1/...; the rest of the head is not
# (in an ensemble each member's nodes carry its prefix, m1/model.22/...: matched without it)
_QUANTISABLE_HEAD = re.compile(r"^/model\.\d+/cv[23]\.\d+/cv[23]\.\d+\.[01]/")
_STEM = "/model.0/"  # the first convolution (Conv, Sigmoid, Mul), on the raw image


def head_index(names: list[str]) -> str:
    """The module prefix of the detection head (the last ``/model.N/`` in the graph)."""
    indices = [int(m.group(1)) for n in names if (m := re.match(r"^/model\.(\d+)/", n))]
    if not indices:
        raise PipelineError("not an ultralytics YOLO graph: no /model.N/ nodes to find the head")
    return f"/model.{max(indices)}/"


def float_nodes(onnx_path: Path) -> list[str]:
    """Names of the nodes that must stay float: the stem, and the head but its first
    convolutions (of each member, in an ensemble)."""
    import onnx

    from components.ensemble import member_prefix

    names = [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    members: dict[str, list[str]] = {}
    for name in names:
        prefix = member_prefix(name)
        members.setdefault(prefix, []).append(name[len(prefix) :])
    yolo = {p: own for p, own in members.items() if any(n.startswith("/model.") for n in own)}
    if not yolo:
        head_index(names)  # the error naming what is missing
    # an ensemble's own nodes (the Concat pooling the members' boxes and scores) stay float:
    # one scale for pixels and scores zeroes the scores, as in a quantised head
    keep = [n for prefix, own in members.items() if prefix not in yolo for n in own]
    for prefix, own in yolo.items():
        head = head_index(own)
        keep += [prefix + n for n in own if n.startswith(_STEM)]
        keep += [prefix + n for n in own if n.startswith(head) and not _QUANTISABLE_HEAD.match(n)]
    return keep


class _Calibration:
    """onnxruntime CalibrationDataReader over letterboxed real images."""

    def __init__(self, input_name: str, images: list[Path], imgsz: int) -> None:
        import cv2
        from ultralytics.data.augment import LetterBox

        letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)
        self._feeds = []
        for path in images:
            bgr = cv2.imread(str(path))
            if bgr is None:
                raise PipelineError(f"{path}: unreadable calibration image")
            rgb = letterbox(image=bgr)[:, :, ::-1].transpose(2, 0, 1)
            tensor = np.ascontiguousarray(rgb, dtype=np.float32)[None] / 255.0
            self._feeds.append({input_name: tensor})
        self._iter = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_int8(onnx_path: Path, out_path: Path, calibration: list[Path], *, imgsz: int) -> Path:
    """Write the INT8 (QDQ) variant of ``onnx_path`` calibrated on ``calibration`` images."""
    if not calibration:
        raise PipelineError("INT8 quantisation needs calibration images (the train split is empty)")
    configure_offline()
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(onnx_path)).get_inputs()[0].name
    keep_float = float_nodes(onnx_path)
    log.info(
        "INT8 from %d calibration images, %d stem and head nodes kept float",
        len(calibration),
        len(keep_float),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcloop-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Calibration(input_name, calibration, imgsz),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
        )
    _copy_metadata(onnx_path, out_path)
    return out_path


def _copy_metadata(src: Path, dest: Path) -> None:
    """Keep ultralytics' metadata (names, imgsz, stride) on the quantised model."""
    import onnx

    source, target = onnx.load(str(src)), onnx.load(str(dest))
    present = {p.key for p in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in present:
            target.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(target, str(dest))


def quantize_registered(settings: Settings, ref: str, *, calibration: int = 64) -> ModelRecord:
    """Quantise a registered version, score the INT8 on the same test split, register it too.

    Calibration images come from the train split of the version's own dataset.
    """
    from components.evaluate import evaluate_onnx
    from components.registry import attach_int8, download_onnx, get_model_record
    from qcloop.dataset import materialize

    uri, name = settings.mlflow.tracking_uri, settings.mlflow.model_name
    record = get_model_record(uri, name, ref)
    with tempfile.TemporaryDirectory(prefix="qcloop-quantize-") as tmp:
        work = Path(tmp)
        fp32 = download_onnx(uri, record, work / "fp32")
        manifest = materialize(settings, record.dataset_version, work / "data")
        train = [work / "data" / i.file for i in manifest.images if i.split == "train"]
        int8 = quantize_int8(
            fp32, work / "model-int8.onnx", train[:calibration], imgsz=record.input_size
        )
        metrics = evaluate_onnx(int8, work / "data", imgsz=record.input_size)
        return attach_int8(uri, name, record.version, int8, metrics)

"""YOLOv8 with a stride-4 head (``model_size`` n-p2): the loop takes it as any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from components.export import export_onnx
from components.parity import letterboxed_tensor
from components.quantize import float_nodes, quantize_int8
from components.train import model_config
from qcloop.errors import PipelineError
from tests.components.conftest import IMGSZ

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def p2_onnx(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of YOLOv8n-p2 on the tiny dataset, exported."""
    from components.train import train_yolo

    out = tmp_path_factory.mktemp("train-p2")
    weights = train_yolo(
        tiny_dataset, out, epochs=1, imgsz=IMGSZ, batch=4, model_cfg=model_config("n-p2")
    )
    return export_onnx(weights, out / "p2.onnx", imgsz=IMGSZ)


def test_model_sizes_name_their_yaml() -> None:
    assert model_config("n-p2") == "yolov8n-p2.yaml" and model_config("s") == "yolov8s.yaml"
    with pytest.raises(PipelineError, match="use one of n, s, n-p2, s-p2"):
        model_config("n-p6")


def test_the_stride_4_head_adds_its_anchors_and_stays_float_in_int8(
    p2_onnx: Path, exported_onnx: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    def anchors(model: Path) -> int:
        return onnx.load(str(model)).graph.output[0].type.tensor_type.shape.dim[2].dim_value

    # strides 4, 8, 16, 32 on a 160 px input: 40² + 20² + 10² + 5² candidates
    assert anchors(p2_onnx) == 1600 + 400 + 100 + 25 == anchors(exported_onnx) + 1600
    keep = float_nodes(p2_onnx)
    heads = {n.split("/")[1] for n in keep if not n.startswith("/model.0/")}
    assert heads == {"model.28"}  # its Detect module (model.22 in YOLOv8n is a neck block)
    assert any(n.endswith("cv2.3.2/Conv") for n in keep)  # the fourth branch's box logits
    calibration = sorted((tiny_dataset / "images").glob("*.jpg"))
    int8 = quantize_int8(p2_onnx, tmp_path / "int8.onnx", calibration, imgsz=IMGSZ)
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    image = next(tiny_dataset / i["file"] for i in manifest["images"] if i["split"] == "test")
    tensor = letterboxed_tensor(image, IMGSZ)
    import onnxruntime as ort

    outputs = []
    for model in (p2_onnx, int8):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: tensor})[0])
    fp32, quantised = outputs
    assert quantised.shape == fp32.shape == (1, 5, 2125)
    # boxes in pixels stay pixels (the decoding is float): within a few px of FP32
    assert np.median(np.abs(quantised[0, :4] - fp32[0, :4])) < 4.0


def test_the_edge_agent_and_the_evaluation_run_it(p2_onnx: Path, tiny_dataset: Path) -> None:
    from components.evaluate import evaluate_onnx
    from edge_agent.inference import Detector

    detector = Detector(p2_onnx)
    detector.warmup()
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    image = next(tiny_dataset / i["file"] for i in manifest["images"] if i["split"] == "test")
    detections = detector.detect(image, confidence=0.0001)
    assert detections and all(d.label == detector.names[0] for d in detections)
    metrics = evaluate_onnx(p2_onnx, tiny_dataset, imgsz=IMGSZ)
    assert metrics.images == sum(i["split"] == "test" for i in manifest["images"])

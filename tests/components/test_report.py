"""The visual evaluation report: real test images with true and predicted boxes, one HTML file."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from components.report import TRUE, render_report
from qcloop.contracts import EvalMetrics
from tests.components.conftest import IMGSZ

pytestmark = pytest.mark.integration


def test_report_shows_each_test_image_with_true_boxes(
    exported_onnx: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    out = render_report(exported_onnx, tiny_dataset, tmp_path / "r.html", imgsz=IMGSZ, conf=0.01)
    text = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 4  # the tiny dataset's test split
    assert text.count("<figcaption>") == 4 and "true" in text
    first = Image.open(io.BytesIO(base64.b64decode(images[0]))).convert("RGB")
    assert TRUE in set(first.getdata())  # true boxes are drawn


def test_report_heads_with_the_figure_and_its_interval(
    exported_onnx: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    metrics = EvalMetrics(
        map50=0.8,
        map50_95=0.56,
        precision=0.7,
        recall=0.6,
        images=28,
        map50_95_low=0.49,
        map50_95_high=0.62,
        captures=7,
    )
    out = render_report(
        exported_onnx, tiny_dataset, tmp_path / "r.html", imgsz=IMGSZ, metrics=metrics
    )
    assert "mAP50-95 0.56 (95% interval 0.49-0.62 over 7 captures)" in out.read_text()

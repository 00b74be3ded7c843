"""Export to ONNX and evaluation of the ONNX through onnxruntime, on real data."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from components.evaluate import evaluate_onnx
from components.export import check_onnx, export_onnx, onnx_metadata
from qcloop.contracts import EvalMetrics
from qcloop.errors import DatasetError, PipelineError
from tests.components.conftest import IMGSZ


def test_missing_weights_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no such weights file; train a model first"):
        export_onnx(tmp_path / "best.pt", tmp_path / "m.onnx", imgsz=IMGSZ)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        evaluate_onnx(tmp_path / "m.onnx", tmp_path, imgsz=IMGSZ, split="holdout")


@pytest.mark.integration
def test_onnx_has_static_input_and_metadata(exported_onnx: Path) -> None:
    model = onnx.load(str(exported_onnx))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, IMGSZ, IMGSZ]
    meta = onnx_metadata(exported_onnx)
    assert meta["names"] == {0: "scratch"}
    assert meta["imgsz"] == [IMGSZ, IMGSZ]
    assert meta["stride"] == 32


@pytest.mark.integration
def test_dynamic_export_has_free_height_and_width(
    exported_onnx: Path, exported_dynamic_onnx: Path
) -> None:
    model = onnx.load(str(exported_dynamic_onnx))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in dims[2:])
    assert onnx_metadata(exported_dynamic_onnx)["imgsz"] == [IMGSZ, IMGSZ]
    # each check refuses the other kind
    with pytest.raises(PipelineError, match="expected \\[1, 3, 160, 160\\]"):
        check_onnx(exported_dynamic_onnx, imgsz=IMGSZ)
    with pytest.raises(PipelineError, match="expected \\[N, 3, height, width\\]"):
        check_onnx(exported_onnx, imgsz=IMGSZ, dynamic=True)


@pytest.mark.integration
def test_evaluate_onnx_on_the_test_split(exported_onnx: Path, tiny_dataset: Path) -> None:
    metrics = evaluate_onnx(exported_onnx, tiny_dataset, imgsz=IMGSZ)
    assert isinstance(metrics, EvalMetrics)
    assert metrics.images == 4
    assert 0.0 <= metrics.map50_95 <= metrics.map50 <= 1.0
    assert metrics.latency_p50_ms is not None and metrics.latency_p95_ms is not None
    assert 0.0 < metrics.latency_p50_ms <= metrics.latency_p95_ms
    assert not list(tiny_dataset.rglob("*.cache")), "evaluation must run on a copy"


@pytest.mark.integration
def test_evaluate_at_another_size_than_exported_is_refused(
    exported_onnx: Path, tiny_dataset: Path
) -> None:
    with pytest.raises(
        PipelineError, match="exported for imgsz \\[160, 160\\], asked to evaluate at 320"
    ):
        evaluate_onnx(exported_onnx, tiny_dataset, imgsz=320)


@pytest.mark.integration
def test_evaluate_an_empty_split_fails_clearly(exported_onnx: Path, tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="the val split is empty; nothing to evaluate"):
        evaluate_onnx(exported_onnx, tiny_dataset, imgsz=IMGSZ, split="val")


@pytest.mark.parametrize(
    "shape", [(300, 450), (450, 300), (17, 33), (640, 640), (100, 1000), (333, 640)]
)
def test_latency_canvas_is_ultralytics_rect_canvas(shape: tuple[int, int]) -> None:
    import numpy as np
    from ultralytics.data.augment import LetterBox

    from components.evaluate import latency_canvas

    height, width = shape
    params = LetterBox(new_shape=(480, 480), auto=True, stride=32).get_params(
        {"img": np.zeros((height, width, 3), np.uint8)}
    )
    new_w, new_h = params["new_unpad"]
    expected = (
        new_w + params["left"] + params["right"],
        new_h + params["top"] + params["bottom"],
    )
    assert latency_canvas((width, height), 480, 32) == expected


@pytest.mark.integration
def test_latency_of_a_dynamic_export_is_timed_at_the_rect_canvas(
    exported_dynamic_onnx: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    from components.evaluate import cpu_latency_ms

    shapes: list[tuple[int, ...]] = []
    real_run = ort.InferenceSession.run

    def run(self: ort.InferenceSession, outputs: object, feeds: dict, *a: object) -> object:
        shapes.append(next(iter(feeds.values())).shape)
        return real_run(self, outputs, feeds, *a)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    images = sorted((tiny_dataset / "images").glob("*.jpg"))[:3]
    p50, p95 = cpu_latency_ms(exported_dynamic_onnx, images, IMGSZ)
    assert 0.0 < p50 <= p95
    # the 450x300 tags run at 160x107 -> 160x128 (32-multiples), not 160x160
    assert set(shapes) == {(1, 3, 128, 160)}

"""Export to ONNX and evaluation of the ONNX through onnxruntime, on real data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest

from components.bootstrap import ImageStats, map50_95
from components.evaluate import evaluate_onnx
from components.export import check_onnx, export_onnx, onnx_metadata
from qcloop.contracts import EvalMetrics
from qcloop.errors import DatasetError, PipelineError
from tests.components.conftest import IMGSZ
from tests.components.datasets import build_dataset


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
    # one test capture: no interval to give
    assert metrics.captures == 1
    assert metrics.map50_95_low is None and metrics.map50_95_high is None


@pytest.mark.integration
def test_evaluate_gives_a_capture_grouped_interval(
    exported_onnx: Path,
    metal_tags: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a test split of every capture of the sample, and a spy on the validation
    import components.evaluate as evaluate

    manifest = build_dataset(metal_tags, tmp_path / "data", {"test": 4})
    seen: list[tuple[Any, list[tuple[str, ImageStats]]]] = []
    real = evaluate.validate_per_image

    def spy(*args: Any, **kwargs: Any) -> tuple[Any, list[tuple[str, ImageStats]]]:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(evaluate, "validate_per_image", spy)
    # when it is evaluated
    metrics = evaluate_onnx(exported_onnx, tmp_path / "data", imgsz=IMGSZ)
    # then the per-image statistics give back ultralytics' own figure, one entry per image
    results, per_image = seen[0]
    assert len(per_image) == metrics.images == 16
    assert abs(map50_95([s for _, s in per_image]) - results.box.map) <= 1e-9
    boxes = {Path(i.file).name: i.boxes for i in manifest.images}
    assert [len(s.target_cls) for _, s in per_image] == [boxes[Path(f).name] for f, _ in per_image]
    # and the figure comes with its interval over the split's captures
    assert metrics.captures == len({i.group for i in manifest.images if i.split == "test"}) == 4
    assert metrics.map50_95_low is not None and metrics.map50_95_high is not None
    assert metrics.map50_95_low <= metrics.map50_95 <= metrics.map50_95_high


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


@pytest.mark.parametrize(
    ("interval", "captures", "expected"),
    [
        ((0.49, 0.62), 7, "mAP50-95 0.56 (95% interval 0.49-0.62 over 7 captures)"),
        (None, 1, "mAP50-95 0.56 (1 capture: no interval)"),
        (None, None, "mAP50-95 0.56"),
    ],
)
def test_map_summary_says_the_interval_when_there_is_one(
    interval: tuple[float, float] | None, captures: int | None, expected: str
) -> None:
    from components.evaluate import map_summary

    low, high = interval or (None, None)
    metrics = EvalMetrics(
        map50=0.8,
        map50_95=0.56,
        precision=0.7,
        recall=0.6,
        images=28,
        map50_95_low=low,
        map50_95_high=high,
        captures=captures,
    )
    assert map_summary(metrics) == expected

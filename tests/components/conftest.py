"""Fixtures of the training room: a tiny real dataset version, a model trained on it once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components.datasets import build_dataset

IMGSZ = 160


@pytest.fixture(scope="session", autouse=True)
def yolo_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep ultralytics' settings and font out of the checkout (unless already set)."""
    if os.environ.get("YOLO_CONFIG_DIR"):
        yield Path(os.environ["YOLO_CONFIG_DIR"])
        return
    path = tmp_path_factory.mktemp("yolo-config")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_CONFIG_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_dataset(metal_tags: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real images: 2 captures for train, 1 for test, none for val (val borrows test)."""
    dest = tmp_path_factory.mktemp("tiny-dataset")
    build_dataset(metal_tags, dest, {"train": 2, "test": 1})
    return dest


@pytest.fixture(scope="session")
def trained_weights(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.pt`` of one epoch of YOLOv8n at imgsz 160 on ``tiny_dataset`` (trained once)."""
    from components.train import train_yolo

    out = tmp_path_factory.mktemp("train")
    return train_yolo(tiny_dataset, out, epochs=1, imgsz=IMGSZ, batch=4)


@pytest.fixture(scope="session")
def exported_onnx(trained_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX export of ``trained_weights``."""
    from components.export import export_onnx

    return export_onnx(trained_weights, tmp_path_factory.mktemp("onnx") / "model.onnx", imgsz=IMGSZ)


@pytest.fixture(scope="session")
def exported_dynamic_onnx(trained_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX export of ``trained_weights`` with free batch, height and width."""
    from components.export import export_onnx

    out = tmp_path_factory.mktemp("onnx-dynamic") / "model.onnx"
    return export_onnx(trained_weights, out, imgsz=IMGSZ, dynamic=True)

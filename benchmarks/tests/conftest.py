"""The benchmarks' tests reuse the project's fixtures: real data and a model trained once."""

import os
from pathlib import Path

import pytest

from tests.components.conftest import (  # noqa: F401
    exported_dynamic_onnx,
    exported_onnx,
    tiny_dataset,
    trained_weights,
    yolo_config_dir,
)
from tests.conftest import metal_tags, project_logging_as_found, s3_endpoint  # noqa: F401
from tests.edge_agent.conftest import offline_ultralytics, yolo_onnx  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def benchmarks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m benchmarks.X`` in a subprocess, whatever its working folder."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))

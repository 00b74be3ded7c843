"""The INT8 benchmark quantises a real export, times both models and scores both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components.datasets import yolo_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_bench_int8_prints_speed_and_accuracy_against_fp32(
    exported_onnx: Path, metal_tags: Path, tmp_path: Path
) -> None:
    # given a trained model's export and a small YOLO folder of real images
    model = Path(shutil.copyfile(exported_onnx, tmp_path / "m.onnx"))
    images = sorted((metal_tags / "images").glob("*.jpg"))
    data = yolo_folder(metal_tags, tmp_path / "data", images[:6])
    calibration = tmp_path / "calibration" / "images"
    calibration.mkdir(parents=True)
    for image in images[-3:]:  # calibrate on other images than those scored
        shutil.copyfile(image, calibration / image.name)
    # when benchmarked briefly
    cmd = [sys.executable, "-m", "benchmarks.bench_int8", "--model", str(model)]
    cmd += ["--data", str(data), "--calibration", "4", "--rounds", "1", "--runs", "2"]
    cmd += ["--calibration-data", str(calibration.parent)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # then the INT8 file sits beside the model, both were timed and scored
    assert (tmp_path / "m-int8.onnx").is_file()
    assert f"calibrated on 3 images of {calibration.parent}" in out.stdout
    figures = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("{")))
    assert set(figures["session_ms_t1"]) == {"fp32", "int8"}
    assert figures["metrics"]["int8"]["images"] == 6
    assert "1 thread(s): FP32" in out.stdout and "(target >= 1.3x" in out.stdout
    assert "mAP50-95 on 6 images" in out.stdout and "(target <= 0.02" in out.stdout


def test_bench_int8_names_a_missing_model(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bench_int8"]
    out = subprocess.run(
        [*cmd, "--model", str(tmp_path / "none.onnx")], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 2 and "none.onnx: no such model" in out.stderr

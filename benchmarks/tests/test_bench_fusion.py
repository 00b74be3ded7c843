"""The fusion benchmark scores an ensemble pooled by NMS, by WBF and with mirrored runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import bench_fusion

ROOT = Path(__file__).resolve().parents[2]

IMGSZ = 160


def rows(*boxes: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6)


def test_weighted_fusion_averages_the_members_boxes_and_shares_the_score() -> None:
    first = rows((0, 0, 10, 10, 0.9, 0), (0, 0, 10, 9.5, 0.8, 0), (50, 50, 60, 60, 0.3, 0))
    second = rows((1, 1, 11, 11, 0.6, 0), (0, 0, 10, 10, 0.5, 1))
    fused = bench_fusion.weighted_fusion([first, second], 0.55)
    expected = [
        # 0.9 and 0.6 of two members: the weighted mean of their corners, (0.9 + 0.6) / 2
        [0.4, 0.4, 10.4, 10.4, 0.75, 0],
        # the first member's second box on the same spot: its member is in that cluster
        [0, 0, 10, 9.5, 0.4, 0],
        # another class on the same spot is another object
        [0, 0, 10, 10, 0.25, 1],
        # one member alone: half its score
        [50, 50, 60, 60, 0.15, 0],
    ]
    np.testing.assert_allclose(fused.numpy(), np.array(expected), atol=1e-5)
    assert bench_fusion.weighted_fusion([rows(), rows()], 0.55).shape == (0, 6)


@pytest.mark.integration
def test_mirrored_model_reads_the_image_the_other_way_round(
    exported_onnx: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort
    from PIL import Image

    mirror = bench_fusion.mirrored(exported_onnx, tmp_path / "mirrored.onnx")
    image = sorted((tiny_dataset / "images").iterdir())[0]
    with Image.open(image) as img:
        pixels = np.asarray(img.convert("RGB").resize((IMGSZ, IMGSZ)), dtype=np.float32)
    tensor = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None] / 255.0)
    plain = ort.InferenceSession(str(exported_onnx)).run(None, {"images": tensor})[0]
    mirrored_input = np.ascontiguousarray(tensor[..., ::-1])
    flipped = ort.InferenceSession(str(mirror)).run(None, {"images": mirrored_input})[0]
    # the mirrored model on the mirrored image sees the plain image: same scores and
    # boxes, the x centre measured from the other side
    assert flipped.shape == plain.shape
    np.testing.assert_allclose(flipped[0, 1:], plain[0, 1:], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(flipped[0, 0], IMGSZ - plain[0, 0], rtol=1e-5, atol=1e-3)


@pytest.mark.integration
def test_fusion_of_identical_members_keeps_one_models_boxes(
    exported_onnx: Path, tiny_dataset: Path
) -> None:
    import onnxruntime as ort
    from PIL import Image
    from ultralytics.models.yolo.detect import val
    from ultralytics.utils import nms

    images = sorted((tiny_dataset / "images").iterdir())[:2]
    batch = []
    for image in images:
        with Image.open(image) as img:
            pixels = np.asarray(img.convert("RGB").resize((IMGSZ, IMGSZ)), dtype=np.float32)
        batch.append(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None] / 255.0))
    session = ort.InferenceSession(str(exported_onnx))
    raw = torch.from_numpy(np.concatenate([session.run(None, {"images": t})[0] for t in batch]))
    anchors = raw.shape[-1]
    validator = SimpleNamespace(args=SimpleNamespace(conf=0.001, iou=0.7, max_det=300))
    one = nms.non_max_suppression(raw, 0.001, 0.7, multi_label=True, max_det=300)
    original = val.DetectionValidator.postprocess
    with bench_fusion.fused_validation([anchors, anchors], 0.55):
        fused = val.DetectionValidator.postprocess(validator, torch.cat([raw, raw], -1))
        with pytest.raises(ValueError, match="anchors, the members have"):
            val.DetectionValidator.postprocess(validator, raw)
    assert val.DetectionValidator.postprocess is original
    # two copies of one model: every box found twice, fused into itself at its own score
    assert sum(len(o) for o in one) > 0
    for single, pooled in zip(one, fused, strict=True):
        mine = torch.cat([pooled["bboxes"], pooled["conf"][:, None]], 1).numpy()
        np.testing.assert_allclose(by_rows(mine), by_rows(single[:, :5].numpy()), atol=1e-3)


def by_rows(table: np.ndarray) -> np.ndarray:
    """The rows of ``table`` in one order (equal scores may come in either)."""
    return table[np.lexsort(np.round(table, 2).T[::-1])]


@pytest.mark.integration
def test_bench_fusion_scores_each_method_on_finished_runs(
    exported_onnx: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    # given the finished runs of two seeds of one variant (here: one model, twice)
    runs = tmp_path / "runs"
    for seed in (0, 1):
        folder = runs / f"reference-seed{seed}"
        folder.mkdir(parents=True)
        shutil.copyfile(exported_onnx, folder / "model.onnx")
        (folder / "result.json").write_text(json.dumps({"weights": "best.pt", "train_s": 5.0}))
    cmd = [sys.executable, "-m", "benchmarks.bench_fusion", "--runs", str(runs)]
    cmd += ["--data", str(tiny_dataset), "--imgsz", str(IMGSZ), "--ensemble"]

    def fusion(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd + list(args), cwd=tmp_path, capture_output=True, text=True, timeout=600
        )

    # when the ensemble of the reference and its next seed is scored every way
    done = fusion("reference,reference")
    # then each method has its row on the version's own test split
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((runs / "fusion-reference,reference.json").read_text())
    assert [(r["variant"], r["seed"], r["images"]) for r in results] == [
        ("nms", 0, 4),
        ("flip", 0, 4),
        ("wbf", 0, 4),
        ("flip+wbf", 0, 4),
    ]
    assert all(r["train_s"] == 10.0 for r in results)
    # two copies fused by WBF are the one model: the same figures as NMS over them
    assert results[2]["map50_95"] == pytest.approx(results[0]["map50_95"], abs=1e-4)
    assert "| nms | 1 |" in done.stdout and "| flip+wbf | 1 |" in done.stdout
    # and a third member with no run is an error row naming it, exit 1
    again = fusion("reference,reference,reference", "--methods", "nms")
    assert again.returncode == 1
    saved = runs / "fusion-reference,reference,reference.json"
    error = json.loads(saved.read_text())[0]["error"]
    assert error.startswith("no finished run of reference seed 2 in ")
    bad = fusion("reference,reference", "--methods", "vote")
    assert bad.returncode == 2 and "--methods vote: use some of nms, flip, wbf" in bad.stderr

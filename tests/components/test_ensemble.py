"""Ensembles: two trained models pooled into one ONNX graph that the loop runs as one model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from components.ensemble import MEMBERS_KEY, member_prefix, merge_onnx
from components.export import check_onnx, export_onnx, onnx_metadata
from components.parity import check_parity, letterboxed_tensor
from components.quantize import float_nodes, quantize_int8
from qcloop.errors import PipelineError
from tests.components.conftest import IMGSZ

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def second_weights(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model of the same data (the scratch recipe, another seed), made clearly
    different: one epoch leaves two seeds' models within a pixel of each other, so its
    class logits are raised (every score moves) to make the members' order visible."""
    import torch

    from components.train import train_yolo

    out = tmp_path_factory.mktemp("train-second")
    trained = train_yolo(
        tiny_dataset, out, epochs=1, imgsz=IMGSZ, batch=4, recipe="scratch", seed=1
    )
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    for key in ("model", "ema"):
        if ckpt.get(key) is not None:
            for branch in ckpt[key].model[-1].cv3:  # the detect head's class branches
                branch[-1].bias.data += 8.0
    torch.save(ckpt, out / "second.pt")
    return out / "second.pt"


@pytest.fixture(scope="module")
def members(
    exported_onnx: Path, second_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    second = export_onnx(second_weights, tmp_path_factory.mktemp("second") / "m.onnx", imgsz=IMGSZ)
    return [exported_onnx, second]


@pytest.fixture(scope="module")
def merged(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return merge_onnx(members, tmp_path_factory.mktemp("ensemble") / "ensemble.onnx")


def _test_images(dataset: Path) -> list[Path]:
    manifest = json.loads((dataset / "manifest.json").read_text())
    return [dataset / i["file"] for i in manifest["images"] if i["split"] == "test"]


def _run(model: Path, tensor: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: tensor})[0]


def test_the_graph_gives_the_members_candidates_together(
    members: list[Path], merged: Path, tiny_dataset: Path
) -> None:
    check_onnx(merged, imgsz=IMGSZ)  # the input and metadata every consumer checks
    meta, first = onnx_metadata(merged), onnx_metadata(members[0])
    assert meta[MEMBERS_KEY] == 2
    assert {k: meta[k] for k in ("names", "imgsz", "stride")} == {
        k: first[k] for k in ("names", "imgsz", "stride")
    }
    tensor = letterboxed_tensor(_test_images(tiny_dataset)[0], IMGSZ)
    outputs = [_run(m, tensor) for m in members]
    pooled = _run(merged, tensor)
    assert pooled.shape == (1, 5, 2 * outputs[0].shape[2])
    np.testing.assert_allclose(pooled, np.concatenate(outputs, axis=2), rtol=1e-5, atol=1e-4)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3), "two different models"


def test_parity_compares_the_graph_with_the_members_in_order(
    trained_weights: Path, second_weights: Path, merged: Path, tiny_dataset: Path
) -> None:
    images = _test_images(tiny_dataset)
    parity = check_parity([trained_weights, second_weights], merged, images, imgsz=IMGSZ, conf=0.01)
    assert parity.boxes > 0 and parity.matched == parity.boxes
    with pytest.raises(PipelineError, match="the export is broken"):  # members swapped
        check_parity([second_weights, trained_weights], merged, images, imgsz=IMGSZ, conf=0.01)
    with pytest.raises(PipelineError, match="output shape"):  # one member is not the ensemble
        check_parity(trained_weights, merged, images, imgsz=IMGSZ, conf=0.01)


def test_members_must_share_the_input(
    members: list[Path], trained_weights: Path, tmp_path: Path
) -> None:
    larger = export_onnx(trained_weights, tmp_path / "192.onnx", imgsz=192)
    with pytest.raises(PipelineError, match=r"192.onnx: input/output .* same image size"):
        merge_onnx([members[0], larger], tmp_path / "bad.onnx")
    with pytest.raises(PipelineError, match="2 or more members"):
        merge_onnx(members[:1], tmp_path / "one.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    relabelled = onnx.load(str(members[1]))
    for prop in relabelled.metadata_props:
        if prop.key == "names":
            prop.value = "{0: 'dent'}"
    onnx.save(relabelled, str(tmp_path / "dent.onnx"))
    with pytest.raises(PipelineError, match=r"dent.onnx: class names .* need the same classes"):
        merge_onnx([members[0], tmp_path / "dent.onnx"], tmp_path / "bad.onnx")
    merge_onnx(members, tmp_path / "pair.onnx")
    with pytest.raises(PipelineError, match=r"pair.onnx: already an ensemble"):
        merge_onnx([members[0], tmp_path / "pair.onnx"], tmp_path / "bad.onnx")


def test_int8_keeps_each_members_stem_and_head_float(
    exported_onnx: Path, merged: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    single = float_nodes(exported_onnx)
    keep = float_nodes(merged)
    # each member's stem and head, and the Concat that pools them (pixels beside scores)
    assert sorted(keep) == sorted([f"m{k}{n}" for k in (0, 1) for n in single] + ["ensemble"])
    assert {member_prefix(n) for n in keep} == {"m0", "m1", ""} and member_prefix(single[0]) == ""
    calibration = sorted((tiny_dataset / "images").glob("*.jpg"))
    int8 = quantize_int8(merged, tmp_path / "int8.onnx", calibration, imgsz=IMGSZ)
    assert onnx_metadata(int8)[MEMBERS_KEY] == 2
    tensor = letterboxed_tensor(_test_images(tiny_dataset)[0], IMGSZ)
    fp32, quantised = _run(merged, tensor), _run(int8, tensor)
    assert quantised.shape == fp32.shape
    # the second member's scores are high (its class logits were raised): a quantised
    # pooling Concat would round them to 0 (one scale for 0-160 px and 0-1 scores)
    half = fp32.shape[2] // 2
    assert fp32[0, 4, half:].max() > 0.5
    np.testing.assert_allclose(quantised[0, 4, half:], fp32[0, 4, half:], atol=0.15)


def test_the_edge_agent_and_the_evaluation_take_it_as_one_model(
    trained_weights: Path,
    second_weights: Path,
    merged: Path,
    tiny_dataset: Path,
    tmp_path: Path,
) -> None:
    from components.evaluate import evaluate_onnx
    from edge_agent.inference import Detector

    detector = Detector(merged)
    detector.warmup()  # what the agent runs before it swaps a model in
    detections = detector.detect(_test_images(tiny_dataset)[0], confidence=0.001)
    assert detections and all(d.label == detector.names[0] for d in detections)
    metrics = evaluate_onnx(merged, tiny_dataset, imgsz=IMGSZ)
    assert metrics.images == len(_test_images(tiny_dataset))
    # dynamic members pool into a dynamic ensemble: the agent runs it on a 3:2 canvas
    parts = [
        export_onnx(w, tmp_path / f"d{k}.onnx", imgsz=IMGSZ, dynamic=True)
        for k, w in enumerate([trained_weights, second_weights])
    ]
    dynamic = merge_onnx(parts, tmp_path / "dynamic.onnx")
    check_onnx(dynamic, imgsz=IMGSZ, dynamic=True)
    assert Detector(dynamic).dynamic
    rect = np.zeros((1, 3, 96, IMGSZ), np.float32)
    singles = [_run(p, rect).shape[2] for p in parts]
    assert _run(dynamic, rect).shape == (1, 5, sum(singles))

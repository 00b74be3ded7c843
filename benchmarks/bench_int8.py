"""INT8 against FP32 for the edge: quantise a YOLOv8 ONNX, then time and score both.

    .venv/bin/python -m benchmarks.bench_int8 [--model M.onnx] [--data YOLO_DIR]
        [--calibration 64] [--calibration-data YOLO_DIR] [--rounds 3] [--runs 30] [--no-eval]

The INT8 model is made as the pipeline makes it (``components.quantize``: static QDQ,
per-channel weights, the detection head kept float, calibrated on the first
``--calibration`` images of ``--calibration-data``, default ``--data``) and written
beside the model as ``<stem>-int8.onnx``. Speed: bare ``session.run`` on one
prepared frame (the agent's input plan), 1 and 2 onnxruntime threads, FP32 and INT8
interleaved ``--rounds`` times in this process; the speed-up compares the median
rounds. Accuracy: mAP50-95 of both on every image of ``--data`` (``qcloop eval``).
The targets: at least 1.3x faster and at most 0.02 mAP50-95 lost; for the accuracy
figure ``--data`` must hold images the model never saw, and the calibration images
should come from the train split (``qcloop dataset pull v1 --split train|test``).
The model defaults to ``.qcloop/bench/yolov8n-480.onnx``
(``benchmarks.make_bench_model``), the data to ../shared/datasets/metal-tags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SPEEDUP_MIN = 1.3
MAP_LOSS_MAX = 0.02


def time_models(models: dict[str, Path], frame: Path, threads: int, rounds: int, runs: int) -> Any:
    """Mean ms of ``runs`` session.run calls per model and round, rounds interleaved."""
    from edge_agent.inference import Detector, prepare_input

    detectors = {name: Detector(path, threads=threads) for name, path in models.items()}
    tensors = {name: prepare_input(frame, d.plan).tensor for name, d in detectors.items()}
    means: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, detector in detectors.items():
            for _ in range(3):  # warm-up
                detector.raw_output(tensors[name])
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                detector.raw_output(tensors[name])
                times.append((time.perf_counter() - started) * 1000)
            means[name].append(round(statistics.mean(times), 2))
    return means


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / ".qcloop/bench/yolov8n-480.onnx")
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "metal-tags"
    )
    parser.add_argument("--calibration", type=int, default=64, help="images to calibrate on")
    parser.add_argument(
        "--calibration-data", type=Path, help="YOLO folder to calibrate on (default: --data)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30, help="session.run calls per round")
    parser.add_argument("--no-eval", action="store_true", help="speed only, no mAP")
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    if not args.model.is_file():
        print(
            f"bench_int8: {args.model}: no such model; run benchmarks.make_bench_model",
            file=sys.stderr,
        )
        return 2
    images = sorted((args.data / "images").glob("*.jpg"))
    calibration = sorted(((args.calibration_data or args.data) / "images").glob("*.jpg"))
    for folder, found in ((args.data, images), (args.calibration_data or args.data, calibration)):
        if not found:
            print(f"bench_int8: {folder}/images has no *.jpg", file=sys.stderr)
            return 2

    from components.export import onnx_metadata
    from components.quantize import quantize_int8

    imgsz = int(onnx_metadata(args.model)["imgsz"][0])  # type: ignore[index]
    int8 = args.model.with_name(f"{args.model.stem}-int8.onnx")
    started = time.perf_counter()
    quantize_int8(args.model, int8, calibration[: args.calibration], imgsz=imgsz)
    quantize_s = round(time.perf_counter() - started, 1)
    models = {"fp32": args.model, "int8": int8}
    sizes = {name: round(path.stat().st_size / 1e6, 1) for name, path in models.items()}
    print(
        f"model {args.model} ({sizes['fp32']} MB) -> {int8} ({sizes['int8']} MB) in {quantize_s} s"
        f", calibrated on {len(calibration[: args.calibration])} images of "
        f"{args.calibration_data or args.data}"
    )

    figures: dict[str, Any] = {"model": str(args.model), "imgsz": imgsz, "size_mb": sizes}
    lines = []
    for threads in (1, 2):
        means = time_models(models, images[0], threads, args.rounds, args.runs)
        fp32, q8 = statistics.median(means["fp32"]), statistics.median(means["int8"])
        figures[f"session_ms_t{threads}"] = means
        ok = "ok" if fp32 / q8 >= SPEEDUP_MIN else "MISSED"
        lines.append(
            f"{threads} thread(s): FP32 {fp32:.1f} ms, INT8 {q8:.1f} ms: "
            f"{fp32 / q8:.2f}x faster  (target >= {SPEEDUP_MIN}x: {ok})"
        )
    if not args.no_eval:
        from components.evaluate import evaluate_yolo_folder

        scores = {name: evaluate_yolo_folder(path, args.data) for name, path in models.items()}
        figures["metrics"] = {name: m.model_dump() for name, m in scores.items()}
        loss = scores["fp32"].map50_95 - scores["int8"].map50_95
        ok = "ok" if loss <= MAP_LOSS_MAX else "MISSED"
        lines.append(
            f"mAP50-95 on {scores['fp32'].images} images of {args.data}: FP32 "
            f"{scores['fp32'].map50_95:.4f}, INT8 {scores['int8'].map50_95:.4f}: "
            f"{loss:+.4f} lost  (target <= {MAP_LOSS_MAX}: {ok})"
        )
    print(json.dumps(figures))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

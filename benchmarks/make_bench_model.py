"""Train a small YOLOv8n on the metal tags and export it to ONNX, for the edge benchmark.

    .venv/bin/python -m benchmarks.make_bench_model [--imgsz 480] [--epochs 3] [--out PATH]
    .venv/bin/python -m benchmarks.make_bench_model --from-weights .qcloop/bench/yolov8n-480.pt

The edge benchmark times a model, not its accuracy; what matters is that it is a real
YOLOv8n detect graph (12 MB) at the product's input size (1x3x480x480). Trained from
``yolov8n.yaml`` (nothing downloaded) on all of ../shared/datasets/metal-tags, on
the CPU (~1 min an epoch on 2 cores). 12 epochs from scratch teach it little: few of
its boxes pass 0.25, so decode and NMS are light; with a trained model they cost
tens of microseconds more a frame. Writes ``.qcloop/bench/yolov8n-<imgsz>.pt`` and two
exports of it: ``yolov8n-<imgsz>.onnx`` (static input) and ``yolov8n-<imgsz>-dynamic.onnx``
(free height and width: the agent runs a 3:2 frame at 480x320). ``--from-weights``
skips the training and exports given weights.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from components.export import export_onnx
from qcloop.yolo_env import configure_offline

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "metal-tags"
    )
    parser.add_argument("--out", type=Path, help="the static export (default .qcloop/bench/...)")
    parser.add_argument("--from-weights", type=Path, help="export these weights, no training")
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    out = args.out or ROOT / ".qcloop" / "bench" / f"yolov8n-{args.imgsz}.onnx"
    if args.from_weights:
        if not args.from_weights.is_file():
            print(f"make_bench_model: {args.from_weights}: no such weights file", file=sys.stderr)
            return 2
        export_both(args.from_weights, out, args.imgsz)
        return 0
    names = (args.data / "classes.txt").read_text().split()
    if not (args.data / "images").is_dir() or not names:
        print(f"make_bench_model: {args.data} has no images/ or classes.txt", file=sys.stderr)
        return 2
    configure_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="qcloop-bench-model-") as tmp:
        data = Path(tmp) / "data.yaml"
        images = str((args.data / "images").resolve())
        data.write_text(
            yaml.safe_dump(
                {"train": images, "val": images, "names": dict(enumerate(names))}, sort_keys=False
            )
        )
        print(f"[bench-model] yolov8n.yaml, {args.epochs} epochs at {args.imgsz} on {images}")
        model = YOLO("yolov8n.yaml")
        model.train(
            data=str(data),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=16,
            device="cpu",
            workers=0,
            project=tmp,
            name="run",
            plots=False,
            val=False,
        )
        weights = out.with_suffix(".pt")
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "run" / "weights" / "last.pt", weights)
    export_both(weights, out, args.imgsz)
    return 0


def export_both(weights: Path, out: Path, imgsz: int) -> None:
    """The static export at ``out`` and the dynamic one beside it (``-dynamic.onnx``)."""
    export_onnx(weights, out, imgsz=imgsz)
    dynamic = out.with_name(f"{out.stem}-dynamic.onnx")
    export_onnx(weights, dynamic, imgsz=imgsz, dynamic=True)
    print(out)
    print(dynamic)


if __name__ == "__main__":
    raise SystemExit(main())

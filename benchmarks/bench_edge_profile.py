"""Where each millisecond of one edge frame goes: the agent's steps timed one by one.

    .venv/bin/python -m benchmarks.bench_edge_profile [--model M.onnx] [--images DIR]
        [--frames 100] [--threads 1] [--width 1920]

One frame at a time on one thread (no prefetch, no second worker), through the same
functions ``Detector.detect`` chains (``edge_agent.inference``), with the heap set up
as the agent sets it (``edge_agent.memory``) and the thread's reused buffers, as an
inference worker prepares its frame:

  read        the JPEG's bytes from disk
  decode      ``load_image``: Pillow decodes the whole frame (EXIF orientation applied)
  to array    ``edge_agent.pixels.frame_pixels``: the frame as an array (Pillow's own
              memory read in place where it can, else a copy)
  resize      ``edge_agent.resize.resize_frame``: OpenCV's bilinear, in numpy, or OpenCV
              itself where the process has it loaded (``QCLOOP_EDGE_RESIZE=opencv``
              loads it, as a camera source does)
  normalise   ``input_tensor``: the float32 input, its border grey, the resized frame
              scaled to [0, 1] into it
  session.run the model (``Detector.raw_output``)
  post        ``decode`` (confidence filter), ``batched_nms``, ``unletterbox`` and the
              ``Detection`` objects (``Detector.infer`` timed whole, minus session.run)
  detect      ``Detector.detect`` on the frame's bytes, timed on its own as a check that
              the steps add up

Prints one JSON line, then a Markdown table: mean and p50 per step, its share of the
frame, and the agent's own cost (everything but ``session.run``) as a ratio to the model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_edge import ROOT, _images, default_model, scaled_copies

STEPS = ("read", "decode", "to array", "resize", "normalise", "session.run", "post")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def profile(model: Path, images: list[Path], threads: int) -> dict[str, Any]:
    """Per-step times (ms) of each frame, and ``Detector.detect`` whole."""
    from edge_agent.inference import (
        Detector,
        ModelInput,
        input_tensor,
        letterbox_input,
        load_image,
        thread_tensor,
    )
    from edge_agent.memory import set_up_heap
    from edge_agent.pixels import frame_pixels
    from edge_agent.resize import resize_frame
    from qcloop.yolo import letterbox_shape

    set_up_heap()

    detector = Detector(model, threads=threads)
    detector.warmup()
    times: dict[str, list[float]] = {step: [] for step in (*STEPS, "detect")}
    for n, path in enumerate([*images[:3], *images]):
        warm = n < 3
        start = time.perf_counter()
        data = path.read_bytes()
        read = _ms(start)
        start = time.perf_counter()
        picture = load_image(data)
        decode = _ms(start)
        start = time.perf_counter()
        pixels = frame_pixels(picture)
        to_array = _ms(start)
        (new_w, new_h), canvas = letterbox_shape(
            picture.size, detector.plan.imgsz, detector.plan.stride
        )
        start = time.perf_counter()
        if picture.size != (new_w, new_h):
            pixels = resize_frame(pixels, (new_w, new_h), reuse=True)
        resize = _ms(start)
        placement = letterbox_input(picture, detector.plan.imgsz, detector.plan.stride)[1]
        start = time.perf_counter()
        tensor = input_tensor(pixels[..., :3], canvas, placement, thread_tensor(canvas))
        normalise = _ms(start)
        prepared = ModelInput(tensor, placement, *picture.size, detector.plan)
        start = time.perf_counter()
        detector.raw_output(tensor)
        run = _ms(start)
        start = time.perf_counter()
        detector.infer(prepared)
        whole_infer = _ms(start)
        start = time.perf_counter()
        detector.detect(data)
        detect = _ms(start)
        if warm:
            continue
        post = whole_infer - run
        for step, value in zip(
            (*STEPS, "detect"),
            (read, decode, to_array, resize, normalise, run, post, detect),
            strict=True,
        ):
            times[step].append(value)
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Mean and p50 of each step (ms)."""
    return {
        step: {
            "mean_ms": round(float(np.mean(values)), 2),
            "p50_ms": round(float(np.median(values)), 2),
        }
        for step, values in times.items()
    }


def report(rows: dict[str, dict[str, float]], label: str) -> None:
    """The Markdown table and the agent's own cost against the model's."""
    steps_total = sum(rows[step]["mean_ms"] for step in STEPS)
    print(f"\n{label}\n")
    print("| step | mean ms | p50 ms | share |")
    print("| --- | --- | --- | --- |")
    for step in STEPS:
        share = rows[step]["mean_ms"] / steps_total
        print(f"| {step} | {rows[step]['mean_ms']} | {rows[step]['p50_ms']} | {share:.0%} |")
    print(f"| sum of steps | {steps_total:.2f} | | |")
    print(
        f"| `Detector.detect` whole | {rows['detect']['mean_ms']} | {rows['detect']['p50_ms']} | |"
    )
    model = rows["session.run"]["mean_ms"]
    own = steps_total - model
    print(
        f"\nagent's own cost {own:.2f} ms a frame: sum of steps / session.run "
        f"{steps_total / model:.2f}x; detect / session.run {rows['detect']['mean_ms'] / model:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument(
        "--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "metal-tags" / "images"
    )
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1)")
    parser.add_argument("--width", type=int, help="frames scaled to this width (bench_edge's)")
    args = parser.parse_args()
    if args.model is None or not args.model.is_file():
        parser.error("no model: run benchmarks.make_bench_model or `make demo`, or pass --model")
    folder = scaled_copies(args.images, args.width) if args.width else args.images
    images = _images(folder, args.frames)
    rows = summary(profile(args.model, images, args.threads))
    from edge_agent.resize import resizer

    resize = resizer()
    label = (
        f"{args.model.name}, {args.frames} frames from {folder}, {args.threads} thread(s), "
        f"resized with {resize}"
    )
    head = {"model": str(args.model), "frames": args.frames, "resize": resize}
    print(json.dumps({**head, "steps": rows}))
    report(rows, label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Edge inference benchmark: the agent's per-frame path vs bare onnxruntime vs ultralytics.

    .venv/bin/python scripts/bench_edge.py [--model M.onnx] [--images DIR] [--frames 50]

Each path runs in its own child process (so its peak RSS is its own), on the same
JPEG files, with one onnxruntime thread:
  agent        ``Detector.detect(jpeg bytes)``: decode, letterbox, session.run, decode, NMS
  session      ``session.run`` alone on a prepared input tensor
  ultralytics  ``YOLO(model.onnx).predict(jpeg path)`` (platform side only; torch)
  release      release -> serving: a retained release published on a real mosquitto,
               until the running agent serves it (download, sha256, load, smoke test, swap)
Prints one JSON line per path, then a Markdown table. The model defaults to the one
``make demo`` released; images to ../shared/datasets/metal-tags/images.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("agent", "session", "ultralytics", "release")


def _stats(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "mean_ms": round(sum(ms) / len(ms), 2)}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _images(folder: Path, frames: int) -> list[Path]:
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise SystemExit(f"bench_edge: no *.jpg in {folder}")
    return [files[i % len(files)] for i in range(frames)]


def _timed(run: Any, items: list[Any], warmup: int = 3) -> list[float]:
    for item in items[:warmup]:
        run(item)
    times = []
    for item in items:
        started = time.perf_counter()
        run(item)
        times.append((time.perf_counter() - started) * 1000)
    return times


def bench_agent(model: Path, images: list[Path]) -> dict[str, Any]:
    from edge_agent.inference import Detector

    detector = Detector(model, threads=1)
    blobs = [p.read_bytes() for p in images]
    return _stats(_timed(detector.detect, blobs))


def bench_session(model: Path, images: list[Path]) -> dict[str, Any]:
    from edge_agent.inference import Detector, letterbox, load_image, to_input

    detector = Detector(model, threads=1)
    session = detector._session  # noqa: SLF001 - the bare session is what is measured
    prepared = [to_input(letterbox(load_image(p), detector.imgsz)[0]) for p in images[:5]]
    tensors = [prepared[i % len(prepared)] for i in range(len(images))]  # RSS: 5 inputs held
    return _stats(_timed(lambda t: session.run(None, {detector.input_name: t}), tensors))


def bench_ultralytics(model: Path, images: list[Path]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from components.yolo_env import configure_offline

    configure_offline()
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(1)
    yolo = YOLO(str(model), task="detect")
    predict = lambda p: yolo.predict(str(p), verbose=False, device="cpu")  # noqa: E731
    return _stats(_timed(predict, images))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_release(model: Path, images: list[Path], rounds: int = 5) -> dict[str, Any]:
    from edge_agent.agent import Agent
    from edge_agent.config import EdgeConfig
    from edge_agent.inference import Detector
    from qcloop.contracts import ModelRef, ReleaseMessage
    from qcloop.mqtt import publish_retained, release_topic
    from qcloop.settings import MqttSettings
    from qcloop.storage import sha256_file

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    port = _free_port()
    (work / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([exe, "-c", str(work / "m.conf")], stderr=subprocess.DEVNULL)
    url = f"mqtt://127.0.0.1:{port}"
    detector = Detector(model)
    config = EdgeConfig.model_validate(
        {
            "device_id": "bench",
            "fleet": "bench",
            "model_dir": work / "models",
            "source": {"kind": "simulated", "interval_s": 0.05},
            "feedback": {"enabled": False},
            "mqtt": {"url": url},
            "store": {"kind": "local", "path": work / "store"},
        }
    )
    agent = Agent(config)
    thread = threading.Thread(target=agent.run, daemon=True)
    try:
        time.sleep(0.5)
        thread.start()
        times = []
        for version in range(1, rounds + 1):
            copy = work / f"model-{version}.onnx"
            copy.write_bytes(model.read_bytes())  # same bytes, a new version: fetched each round
            release = ReleaseMessage(
                fleet="bench",
                model=ModelRef(name="bench", version=str(version)),
                sha256=sha256_file(copy),
                size=copy.stat().st_size,
                url=copy.as_uri(),
                input_size=detector.imgsz[0],
                class_names=detector.names,
                released_by="bench",
            )
            started = time.perf_counter()
            publish_retained(
                MqttSettings(url=url), release_topic("bench"), release.to_json().encode()
            )
            while agent.serving_model != release.model:
                time.sleep(0.002)
            times.append((time.perf_counter() - started) * 1000)
        return {**_stats(times), "rounds": rounds}
    finally:
        agent.stop()
        thread.join(15)
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def child(mode: str, model: Path, images: list[Path]) -> None:
    run = {
        "agent": bench_agent,
        "session": bench_session,
        "ultralytics": bench_ultralytics,
        "release": bench_release,
    }[mode]
    result = run(model, images)
    print(
        json.dumps({"mode": mode, "frames": len(images), **result, "peak_rss_mb": _peak_rss_mb()})
    )


def default_model() -> Path | None:
    found = sorted((ROOT / ".qcloop" / "demo" / "store" / "models").glob("*/*/model.onnx"))
    return found[-1] if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument(
        "--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "metal-tags" / "images"
    )
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.model is None or not args.model.is_file():
        print("bench_edge: no model: run `make demo` or pass --model M.onnx", file=sys.stderr)
        return 2
    images = _images(args.images, args.frames)
    if args.mode:
        child(args.mode, args.model, images)
        return 0
    rows = []
    for mode in args.modes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--model",
            str(args.model),
            "--images",
            str(args.images),
            "--frames",
            str(args.frames),
        ]
        out = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        )
        if out.returncode != 0:
            print(f"bench_edge: {mode} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        line = out.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        rows.append(json.loads(line))
    print("\n| path | frames | p50 ms | p95 ms | mean ms | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        frames = r.get("rounds", r["frames"]) if r["mode"] == "release" else r["frames"]
        cells = [r["mode"], frames, r["p50_ms"], r["p95_ms"], r["mean_ms"], r["peak_rss_mb"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

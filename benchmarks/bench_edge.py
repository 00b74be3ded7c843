"""Edge inference benchmark: the agent's per-frame path vs bare onnxruntime vs ultralytics.

    .venv/bin/python -m benchmarks.bench_edge [--model M.onnx] [--images DIR] [--frames 200]

Each path runs in its own child process (so its peak RSS is its own), on the same
JPEG files. A path is ``name@wNtM``: N inference workers, M onnxruntime (torch) threads.
  session      ``session.run`` alone on a prepared input tensor (the agent's input plan:
               for a dynamic-input model the smallest canvas of stride multiples): the baseline;
               with N workers, N sessions side by side on N threads (the agent's own cost is
               its per frame against the session path of the same workers x threads)
  agent        the running ``Agent``: JPEG bytes from a source -> prefetch thread (decode;
               with one worker also letterbox, normalise) -> N workers: (letterbox,
               normalise,) session.run, decode, NMS -> in frame order: feedback policy,
               MQTT publish to a real mosquitto. Per frame = wall
               time from the first to the last frame done / frames; latency = from the
               source handing a frame out to its result published (the source hands
               frames out as fast as the agent takes them, so a few wait in the queue)
  detect       ``Detector.detect(jpeg bytes)`` on one thread: the agent's per-frame work
               without the prefetch thread (``prefetch_frames = 0``)
  ultralytics  ``YOLO(model.onnx).predict(jpeg path, imgsz=the model's)`` (platform side
               only; torch); its onnxruntime session uses every core whatever M is. On a
               dynamic-input model it pads to the square size (its default, ``rect=False``)
  ultralytics-rect  the same with ``rect=True``: on a dynamic-input model the smallest
               canvas, as the agent does (no difference on a static model)
  release      release -> serving: a retained release published on a real mosquitto,
               until the running agent serves it (download, sha256, load, smoke test, swap)
  paced        the running agent fed at a camera's pace (``--fps``, 10): latency from the
               frame's arrival to its result published, p50/p95, with nothing queued
  paced-inline the same with ``prefetch_frames = 0``: each frame decoded on the inference
               thread when it comes (the setting for an inline reject gate)
  infer        ``qcloop-edge infer --json`` over the images, with its defaults (threads: the
               cores it may use); per frame after start-up (first result line to last)
Prints one JSON line per path, a Markdown table, then the targets as ratios against the
baselines measured in the same run, and for each agent the ceiling the CPU sets on the
aim against ultralytics: how much faster than ultralytics the bare sessions at the
agent's workers x threads are (an agent of no cost of its own). The model defaults to
``.qcloop/bench/yolov8n-480.onnx`` (``benchmarks.make_bench_model``), else the one
``make demo`` released; images to ../shared/datasets/metal-tags/images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PATHS = (
    "session@w1t1",
    "session@w1t2",
    "session@w2t1",
    "agent@w1t1",
    "agent@w2t1",
    "detect@w1t1",
    "ultralytics@w1t2",
    "ultralytics-rect@w1t2",
    "release@w1t1",
    "release@w2t1",
    "paced@w2t1",
    "paced-inline@w1t2",
    "infer@w1t1",
)
PACE = {"fps": 10.0}  # the camera's pace of the paced paths (--fps)


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


def scaled_copies(folder: Path, width: int) -> Path:
    """The JPEGs of ``folder`` scaled to ``width`` (aspect kept), made once."""
    from PIL import Image

    out = ROOT / ".qcloop" / "bench" / f"frames-{width}"
    sources = sorted(folder.glob("*.jpg"))
    if out.is_dir() and len(list(out.glob("*.jpg"))) == len(sources):
        return out
    out.mkdir(parents=True, exist_ok=True)
    for path in sources:
        with Image.open(path) as image:
            height = round(image.height * width / image.width)
            scaled = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            scaled.save(out / path.name, "JPEG", quality=90)
    return out


def _timed(run: Any, items: list[Any], warmup: int = 3) -> list[float]:
    for item in items[:warmup]:
        run(item)
    times = []
    for item in items:
        started = time.perf_counter()
        run(item)
        times.append((time.perf_counter() - started) * 1000)
    return times


def bench_detect(model: Path, images: list[Path], threads: int, workers: int) -> dict[str, Any]:
    from edge_agent.inference import Detector

    detector = Detector(model, threads=threads)
    blobs = [p.read_bytes() for p in images]
    return _stats(_timed(detector.detect, blobs))


def bench_session(model: Path, images: list[Path], threads: int, workers: int) -> dict[str, Any]:
    """Bare ``session.run``; with N workers, N sessions run side by side on N threads (the
    baseline of an agent with as many workers): per frame = wall time / frames."""
    from edge_agent.inference import Detector, prepare_input

    detectors = [Detector(model, threads=threads) for _ in range(workers)]
    plan, name = detectors[0].plan, detectors[0].input_name
    prepared = [prepare_input(p, plan).tensor for p in images[:5]]
    tensors = [prepared[i % len(prepared)] for i in range(len(images))]  # RSS: 5 inputs held
    if workers == 1:
        session = detectors[0]._session
        return _stats(_timed(lambda t: session.run(None, {name: t}), tensors))
    times: list[list[float]] = [[] for _ in detectors]

    def work(n: int) -> None:
        session = detectors[n]._session
        session.run(None, {name: tensors[0]})  # warm-up
        barrier.wait()
        times[n] = _timed(lambda t: session.run(None, {name: t}), tensors[n::workers], warmup=0)

    barrier = threading.Barrier(workers + 1)
    threads_ = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads_:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads_:
        thread.join()
    wall = (time.perf_counter() - started) * 1000
    return {**_stats([t for ts in times for t in ts]), "mean_ms": round(wall / len(tensors), 2)}


def bench_ultralytics(
    model: Path, images: list[Path], threads: int, workers: int, rect: bool = False
) -> dict[str, Any]:
    from qcloop.yolo_env import configure_offline

    configure_offline()
    import torch
    from ultralytics import YOLO

    from components.export import onnx_metadata

    imgsz = onnx_metadata(model)["imgsz"]  # a dynamic model would otherwise run at 640
    torch.set_num_threads(threads)
    yolo = YOLO(str(model), task="detect")

    def predict(path: Path) -> Any:
        return yolo.predict(str(path), imgsz=imgsz, rect=rect, verbose=False, device="cpu")

    return _stats(_timed(predict, images))


def bench_ultralytics_rect(
    model: Path, images: list[Path], threads: int, workers: int
) -> dict[str, Any]:
    return bench_ultralytics(model, images, threads, workers, rect=True)


@contextmanager
def _broker() -> Iterator[tuple[str, Path]]:
    """A real mosquitto on a free loopback port (the demo's broker) and a scratch folder."""
    from pipelines.broker import EmbeddedBroker, free_port

    with (
        EmbeddedBroker(port=free_port(), prefer="mosquitto") as broker,
        tempfile.TemporaryDirectory(prefix="bench-edge-") as work,
    ):
        yield broker.url, Path(work)


def _agent_config(work: Path, url: str, threads: int, **extra: Any) -> Any:
    """A bench agent trusting a release key made in ``work`` (``work/keys/release.key``)."""
    from edge_agent.config import EdgeConfig
    from qcloop.signing import generate_keypair

    if not (work / "keys" / "release.key").exists():
        generate_keypair(work / "keys")
    return EdgeConfig.model_validate(
        {
            "device_id": "bench",
            "fleet": "bench",
            "model_dir": work / "models",
            "ort_threads": threads,
            "source": {"kind": "simulated", "interval_s": 0.05},
            "mqtt": {"url": url},
            "store": {"kind": "local", "path": work / "store"},
            "release": {"public_key": work / "keys" / "release.pub"},
            **extra,
        }
    )


class _TimedSource:
    """JPEG bytes held in memory, handed out as fast as asked; when each was out and done."""

    def __init__(self, blobs: list[bytes], fps: float | None = None) -> None:
        from edge_agent.sources import Frame

        self.frames = [Frame(name=f"frame-{i:05d}.jpg", data=b) for i, b in enumerate(blobs)]
        self.out: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self._next = 0
        self._interval = 1.0 / fps if fps else 0.0  # a paced camera: one frame every interval
        self._due = 0.0

    def next_frame(self, timeout: float) -> Any:
        if self._next >= len(self.frames):
            time.sleep(timeout)
            return None
        if self._interval:
            now = time.perf_counter()
            self._due = max(self._due, now) if self._due else now
            if self._due - now > timeout:
                time.sleep(timeout)
                return None
            time.sleep(max(0.0, self._due - now))
            self._due += self._interval
        frame = self.frames[self._next]
        self._next += 1
        self.out[frame.name] = time.perf_counter()
        return frame

    def done(self, frame: Any) -> None:  # after the result is published
        self.done_at[frame.name] = time.perf_counter()

    def reject(self, frame: Any, reason: str) -> None:
        raise RuntimeError(f"{frame.name} rejected: {reason}")


def bench_agent(
    model: Path, images: list[Path], threads: int, workers: int, warmup: int = 3
) -> dict[str, Any]:
    """The running agent over ``images`` (+ warm-up frames): per-frame cost and latency."""
    from edge_agent.agent import Agent

    blobs = [p.read_bytes() for p in images[:warmup] + images]
    source = _TimedSource(blobs)
    with _broker() as (url, work):
        # the default feedback policy (band) with a limit: the decisions run on every
        # frame, a few frames are spooled (fsync) as in production
        feedback = {"policies": {"band": {"per_minute": 6}}, "drain_timeout_s": 0.0}
        config = _agent_config(work, url, threads, feedback=feedback, inference_workers=workers)
        agent = Agent(config, source=source, initial_model=model)
        stats = agent.run(max_frames=len(blobs), timeout_s=600)
    if stats.frames_inferred != len(blobs):
        raise RuntimeError(f"agent inferred {stats.frames_inferred} of {len(blobs)} frames")
    names = [f.name for f in source.frames]
    first, last = source.done_at[names[warmup - 1]], source.done_at[names[-1]]
    per_frame = (last - first) * 1000 / (len(names) - warmup)
    latency = [(source.done_at[n] - source.out[n]) * 1000 for n in names[warmup:]]
    return {
        "per_frame_ms": round(per_frame, 2),
        "latency": _stats(latency),
        "feedback_sent": stats.feedback_images,
        "prefetch_frames": config.prefetch_frames,
    }


def bench_paced(
    model: Path,
    images: list[Path],
    threads: int,
    workers: int,
    prefetch: int | None = None,
    warmup: int = 3,
) -> dict[str, Any]:
    """The running agent fed at ``PACE``: latency from arrival to result, nothing queued."""
    from edge_agent.agent import Agent

    blobs = [p.read_bytes() for p in images[:warmup] + images]
    source = _TimedSource(blobs, fps=PACE["fps"])
    extra: dict[str, Any] = {"inference_workers": workers, "feedback": {"enabled": False}}
    if prefetch is not None:
        extra["prefetch_frames"] = prefetch
    with _broker() as (url, work):
        config = _agent_config(work, url, threads, **extra)
        stats = Agent(config, source=source, initial_model=model).run(
            max_frames=len(blobs), timeout_s=600
        )
    if stats.frames_inferred != len(blobs):
        raise RuntimeError(f"agent inferred {stats.frames_inferred} of {len(blobs)} frames")
    names = [f.name for f in source.frames[warmup:]]
    latency = [(source.done_at[n] - source.out[n]) * 1000 for n in names]
    return {"fps": PACE["fps"], "prefetch_frames": config.prefetch_frames, **_stats(latency)}


def bench_paced_inline(
    model: Path, images: list[Path], threads: int, workers: int
) -> dict[str, Any]:
    """``bench_paced`` without the prefetch thread (``prefetch_frames = 0``)."""
    return bench_paced(model, images, threads, workers, prefetch=0)


def bench_infer(model: Path, images: list[Path], threads: int, workers: int) -> dict[str, Any]:
    """``qcloop-edge infer --json`` with its defaults; per frame after its start-up: from
    its first result line to its last (it prints each as soon as it is out, in order)."""
    cmd = [sys.executable, "-m", "edge_agent", "infer", "--model", str(model), "--json"]
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        child = subprocess.Popen(
            [*cmd, *map(str, images)], stdout=subprocess.PIPE, stderr=errors, text=True
        )
        assert child.stdout is not None
        stamps = [time.perf_counter() for _ in child.stdout]
        if child.wait() != 0:
            errors.seek(0)
            raise RuntimeError(f"qcloop-edge infer failed: {errors.read()[-500:]}")
    if len(stamps) != len(images):
        raise RuntimeError("qcloop-edge infer: one JSON line per image expected")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "mean_ms": round((stamps[-1] - stamps[0]) * 1000 / (len(images) - 1), 2),
        "p50_ms": "-",
        "p95_ms": "-",
        "startup_s": round(stamps[0] - start, 2),
        "peak_rss_mb": round(peak, 1),
    }


def bench_release(
    model: Path, images: list[Path], threads: int, workers: int, rounds: int = 5
) -> dict[str, Any]:
    """The running agent (started on ``model``) gets ``rounds`` new releases of it.

    The process holds nothing but the agent, so its peak RSS is the agent's own
    across swaps (serving model, the previous one kept for rollback, the new one).
    """
    from edge_agent.agent import Agent

    with _broker() as (url, work):
        config = _agent_config(
            work, url, threads, feedback={"enabled": False}, inference_workers=workers
        )
        agent = Agent(config, initial_model=model)
        return _release_rounds(agent, model, work, url, rounds)


def _release_rounds(agent: Any, model: Path, work: Path, url: str, rounds: int) -> dict[str, Any]:
    from datetime import timedelta

    from qcloop.contracts import ModelRef, ReleaseMessage, utcnow
    from qcloop.mqtt import publish_retained, release_topic
    from qcloop.settings import MqttSettings
    from qcloop.signing import load_private_key, seal
    from qcloop.storage import sha256_file

    key = load_private_key(work / "keys" / "release.key")

    thread = threading.Thread(target=agent.run, daemon=True)
    try:
        thread.start()
        while agent.serving_model is None:
            time.sleep(0.01)
        serving = agent._serving.detector
        imgsz, names = serving.imgsz, serving.names
        del serving  # the agent drops the model at the first swap: so does this frame
        times = []
        for version in range(1, rounds + 1):
            copy = work / f"model-{version}.onnx"
            shutil.copyfile(model, copy)  # same bytes, a new version: fetched each round
            release = ReleaseMessage(
                fleet="bench",
                model=ModelRef(name="bench", version=str(version)),
                sha256=sha256_file(copy),
                size=copy.stat().st_size,
                url=copy.as_uri(),
                input_size=imgsz[0],
                class_names=names,
                released_by="bench",
                sequence=version,
                expires_at=utcnow() + timedelta(days=1),
            )
            payload = seal(release, key).payload()
            started = time.perf_counter()
            publish_retained(MqttSettings(url=url), release_topic("bench"), payload)
            while agent.serving_model != release.model:
                time.sleep(0.002)
            times.append((time.perf_counter() - started) * 1000)
        return {**_stats(times), "rounds": rounds}
    finally:
        agent.stop()
        thread.join(15)


RUNS = {
    "session": bench_session,
    "agent": bench_agent,
    "detect": bench_detect,
    "ultralytics": bench_ultralytics,
    "ultralytics-rect": bench_ultralytics_rect,
    "release": bench_release,
    "paced": bench_paced,
    "paced-inline": bench_paced_inline,
    "infer": bench_infer,
}


def parse_path(spec: str) -> tuple[str, int, int]:
    """``agent@w2t1`` -> ("agent", 2 workers, 1 thread)."""
    match = re.fullmatch(r"([a-z-]+)@w(\d+)t(\d+)", spec)
    if not match or match.group(1) not in RUNS:
        raise SystemExit(f"bench_edge: bad path {spec!r}: NAME@wNtM, NAME one of {list(RUNS)}")
    return match.group(1), int(match.group(2)), int(match.group(3))


def child(spec: str, model: Path, images: list[Path]) -> None:
    name, workers, threads = parse_path(spec)
    result = RUNS[name](model, images, threads, workers)
    row = {"path": spec, "mode": name, "frames": len(images), **result}
    print(json.dumps({"peak_rss_mb": _peak_rss_mb(), **row}))  # infer: the CLI's own peak


def default_model() -> Path | None:
    bench = ROOT / ".qcloop" / "bench" / "yolov8n-480.onnx"
    if bench.is_file():
        return bench
    found = sorted((ROOT / ".qcloop" / "demo" / "store" / "models").glob("*/*/model.onnx"))
    return found[-1] if found else None


def _cells(row: dict[str, Any]) -> list[Any]:
    """per-frame ms (mean), p50, p95."""
    if row["mode"] == "agent":
        lat = row["latency"]
        return [row["per_frame_ms"], lat["p50_ms"], lat["p95_ms"]]
    if row["mode"] in ("release", "paced", "paced-inline"):
        return ["-", row["p50_ms"], row["p95_ms"]]
    return [row["mean_ms"], row["p50_ms"], row["p95_ms"]]


def per_frame(row: dict[str, Any]) -> float:
    if row["mode"] in ("paced", "paced-inline"):
        return float(row["p50_ms"])
    return float(row["per_frame_ms"] if row["mode"] == "agent" else row["mean_ms"])


def _cores(row: dict[str, Any]) -> tuple[int, int]:
    """(workers, threads) of a row's path."""
    _, workers, threads = parse_path(row["path"])
    return workers, threads


def report(rows: list[dict[str, Any]]) -> None:
    """The Markdown table, then each target as a ratio against its same-run baseline."""
    print("\n| path | frames | per frame ms | p50 ms | p95 ms | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [r["path"], r.get("rounds", r["frames"]), *_cells(r), r["peak_rss_mb"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        kinds.setdefault(r["mode"], []).append(r)
    print()
    for agent in kinds.get("agent", []):
        faster = 1 / 1.3  # at least 1.3x faster than ultralytics on the same model and images
        for other, target in (
            ("session", 1.10),
            ("ultralytics", faster),
            ("ultralytics-rect", faster),
        ):
            for base in kinds.get(other, []):
                if other == "session" and _cores(base) != _cores(agent):
                    continue  # the agent's own cost: against the same workers x threads
                ratio = per_frame(agent) / per_frame(base)
                worst = per_frame(agent) / base["best_per_frame_ms"]
                ok = "ok" if worst <= target else "MISSED"
                print(
                    f"{agent['path']:<14} / {base['path']:<18} {ratio:5.2f}x, "
                    f"{worst:5.2f}x against its best round  (target <= {target:.2f}x: {ok})"
                )
        for base in kinds.get("ultralytics", []) + kinds.get("ultralytics-rect", []):
            for bare in kinds.get("session", []):
                if _cores(bare) == _cores(agent):  # what the target allows on this CPU
                    ceiling = per_frame(base) / per_frame(bare)
                    print(
                        f"{'':<14}   ceiling: {bare['path']} is {ceiling:4.2f}x faster than "
                        f"{base['path']} (an agent of no cost of its own)"
                    )
        ok = "ok" if agent["peak_rss_mb"] <= 250 else "MISSED"
        print(f"{agent['path']:<14} peak RSS {agent['peak_rss_mb']} MB  (target <= 250 MB: {ok})")
    for detect in kinds.get("detect", []):
        for base in kinds.get("session", []):
            if _cores(base) != _cores(detect):
                continue
            ratio = per_frame(detect) / per_frame(base)
            print(f"{detect['path']:<14} / {base['path']:<18} {ratio:5.2f}x  (no prefetch)")
    best_agent = min((per_frame(a) for a in kinds.get("agent", [])), default=None)
    for infer in kinds.get("infer", []):
        if best_agent is not None:
            ok = "ok" if per_frame(infer) <= best_agent else "MISSED"
            print(
                f"infer per frame {per_frame(infer)} ms against the agent's best "
                f"{best_agent} ms  (target: no slower: {ok})"
            )
    for paced in kinds.get("paced", []) + kinds.get("paced-inline", []):
        print(
            f"{paced['path']:<18} at {paced['fps']:g} fps: frame -> result p50 "
            f"{paced['p50_ms']} ms, p95 {paced['p95_ms']} ms (prefetch {paced['prefetch_frames']})"
        )
    for release in kinds.get("release", []):
        ok = "ok" if release["p50_ms"] <= 2000 else "MISSED"
        print(f"release -> serving p50 {release['p50_ms']} ms  (target <= 2000 ms: {ok})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument(
        "--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "metal-tags" / "images"
    )
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument(
        "--fps", type=float, default=PACE["fps"], help="the camera's pace of the paced paths (10)"
    )
    parser.add_argument(
        "--width",
        type=int,
        help="camera-sized frames: the images scaled to this width, JPEG quality 90 "
        "(written once under .qcloop/bench/frames-WIDTH)",
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated NAME@wNtM")
    parser.add_argument(
        "--rounds", type=int, default=3, help="run every path this often, interleaved; medians"
    )
    parser.add_argument("--path", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.model is None or not args.model.is_file():
        print(
            "bench_edge: no model: run benchmarks.make_bench_model or `make demo`, "
            "or pass --model M.onnx",
            file=sys.stderr,
        )
        return 2
    if args.width and not args.path:
        args.images = scaled_copies(args.images, args.width)
    images = _images(args.images, args.frames)
    PACE["fps"] = args.fps
    if args.path:
        child(args.path, args.model, images)
        return 0
    specs = args.paths.split(",")
    for spec in specs:
        parse_path(spec)
    print(
        f"model {args.model}, {args.frames} frames from {args.images}, on {os.cpu_count()} CPUs, "
        f"{args.rounds} interleaved round(s)"
    )
    runs: dict[str, list[dict[str, Any]]] = {spec: [] for spec in specs}
    for _ in range(args.rounds):  # interleaved: a slow minute of a shared machine hits all
        for spec in specs:
            cmd = [sys.executable, __file__, "--path", spec, "--model", str(args.model)]
            cmd += ["--images", str(args.images), "--frames", str(args.frames)]
            cmd += ["--fps", str(args.fps)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"bench_edge: {spec} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            line = out.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            runs[spec].append(json.loads(line))
    report([median_run(rows) for rows in runs.values()])
    return 0


def median_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose per-frame figure is the median one (its other figures with it)."""
    key = (lambda r: r["p50_ms"]) if rows[0]["mode"] == "release" else per_frame
    ordered = sorted(rows, key=key)
    return {**ordered[len(rows) // 2], "best_per_frame_ms": key(ordered[0])}


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: the real agent for an hour of paced frames while the store and broker go down and up.

    .venv/bin/python -m benchmarks.bench_soak [--duration 3600] [--fps 2] [--images DIR]
        [--store-outage 120/600] [--broker-outage 60/900] [--model ONNX] [--out DIR]

``python -m edge_agent run`` runs as a subprocess on a hot folder that gets ``--fps``
real photos a second (each one other bytes: a JPEG comment with its number, so no frame
is a duplicate of another), against a real mosquitto and a real S3 endpoint (moto's
server behind a relay that refuses connections while the store is "down"). Every
``--sample-every`` s it records the agent's RSS and CPU time, the disk used by its state
folder (the spool) and by the hot folder's ``processed/`` and ``rejected/``, and the frames
done. At the end it feeds nothing more, waits until every frame is done and the spool is
empty, stops the agent (SIGTERM) and reports RSS and disk over time (start, max, end,
slope per hour after the first tenth of the run), frames inferred, feedback images sent
vs delivered to S3 (lost), duplicate uploads, and log and error lines per hour of the
agent's JSON log. A table on stdout; the figures and the samples in ``OUT/soak.json``.

The model is a small untrained YOLOv8n (made once, offline); a random share of the frames
(``--feedback-share``) is sent back, whatever the model finds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.soak_services import Mosquitto, MotoServer, Relay, dir_bytes, rss_bytes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "datasets" / "metal-tags" / "images"
FALLBACK_IMAGES = ROOT / "tests" / "data" / "metal-tags" / "images"
MB = 1024 * 1024


@dataclass(frozen=True)
class Outage:
    """Down for ``down_s`` seconds at every multiple of ``every_s`` that ends before the run."""

    down_s: float
    every_s: float

    @classmethod
    def parse(cls, text: str) -> Outage:
        try:
            down, every = (float(x) for x in text.split("/"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}': expected DOWN/EVERY seconds") from None
        if not 0 <= down < every:
            raise argparse.ArgumentTypeError(f"'{text}': need 0 <= DOWN < EVERY")
        return cls(down, every)

    def is_down(self, t: float, duration: float) -> bool:
        start = (t // self.every_s) * self.every_s
        return start > 0 and start + self.down_s <= duration and t < start + self.down_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_soak",
        description="Soak the edge agent: paced real frames for DURATION s with the store "
        "and the broker taken down and up on a schedule; RSS, disk, frames, feedback "
        "delivered (lost, duplicates) and log volume over time.",
    )
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of frames (3600)")
    p.add_argument("--fps", type=float, default=2.0, help="frames a second into the hot folder (2)")
    p.add_argument(
        "--images",
        type=Path,
        help="folder of JPEG photos, used in turn (default "
        "../shared/datasets/metal-tags/images, else tests/data/metal-tags)",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="ONNX the agent serves (default: an untrained YOLOv8n at 320, made once under OUT)",
    )
    p.add_argument(
        "--store-outage",
        type=Outage.parse,
        default=Outage(120, 600),
        metavar="DOWN/EVERY",
        help="S3 refuses connections for DOWN s every EVERY s (120/600; 0/1: never)",
    )
    p.add_argument(
        "--broker-outage",
        type=Outage.parse,
        default=Outage(60, 900),
        metavar="DOWN/EVERY",
        help="mosquitto killed for DOWN s every EVERY s (60/900; 0/1: never)",
    )
    p.add_argument(
        "--feedback-share",
        type=float,
        default=0.5,
        help="share of frames the agent sends back (random policy, 0.5)",
    )
    p.add_argument("--sample-every", type=float, default=15.0, help="seconds between samples (15)")
    p.add_argument(
        "--retention-mb",
        type=float,
        default=64.0,
        help="retention of processed/ and rejected/: MB per folder (64)",
    )
    p.add_argument(
        "--backoff-max",
        type=float,
        default=300.0,
        help="the agent's upload retry backoff cap, s (300, the product default)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=900.0,
        help="at the end, wait this long for the frames and the spool (900)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / ".qcloop" / "bench-soak",
        help="results (soak.json, agent.log) and the run's folders (.qcloop/bench-soak)",
    )
    return p.parse_args(argv)


def default_model(out: Path) -> Path:
    """An untrained YOLOv8n exported at 320 (a real graph; its findings do not matter here)."""
    model = out / "yolov8n-320-untrained.onnx"
    if model.is_file():
        return model
    from qcloop.yolo_env import configure_offline

    configure_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="qcloop-soak-model-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            exported = Path(YOLO("yolov8n.yaml").export(format="onnx", imgsz=320)).resolve()
        finally:
            os.chdir(cwd)
        shutil.copy(exported, model)
    return model


def numbered_jpeg(data: bytes, n: int) -> bytes:
    """The same photo with a JPEG comment (COM segment) saying ``n``: other bytes, same pixels."""
    comment = f"qcloop soak frame {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def write_config(work: Path, broker: Mosquitto, relay: Relay, args: argparse.Namespace) -> Path:
    from qcloop.signing import generate_keypair

    _, public = generate_keypair(work / "keys")
    config = work / "edge.toml"
    retention = int(args.retention_mb * MB)
    config.write_text(f"""device_id = "soak"
fleet = "soak"
model_dir = "{work / "models"}"
state_dir = "{work / "state"}"
[source]
kind = "folder"
path = "{work / "inbox"}"
processed = "move"
poll_interval_s = 0.2
[feedback]
backoff_max_s = {args.backoff_max}
[feedback.policies.band]
enabled = false
[feedback.policies.random]
share = {args.feedback_share}
seed = 1
[retention]
max_bytes = {retention}
interval_s = 60.0
[release]
public_key = "{public}"
[mqtt]
url = "{broker.url}"
[store]
kind = "s3"
endpoint = "http://127.0.0.1:{relay.port}"
bucket = "soak"
access_key = "soak"
secret_key = "soak"
""")
    return config


class Soak:
    """One soak run: services, the agent process, the feeder, the schedule and the samples."""

    def __init__(self, args: argparse.Namespace, work: Path, photos: list[bytes]) -> None:
        self.args, self.work, self.photos = args, work, photos
        self.inbox = work / "inbox"
        self.moto = MotoServer()
        self.relay = Relay(self.moto.port)
        self.broker = Mosquitto(work / "mosquitto")
        self.samples: list[dict[str, float]] = []
        self.written = 0
        self.outages = {"store": 0, "broker": 0}

    def start(self, model: Path) -> subprocess.Popen[bytes]:
        self.moto.up()
        self.relay.up()
        self.broker.up()
        self.inbox.mkdir(parents=True)
        (self.work / "staging").mkdir()
        config = write_config(self.work, self.broker, self.relay, self.args)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
        cmd += ["--model", str(model), "--stats-out", str(self.work / "stats.json")]
        self.log = (self.args.out / "agent.log").open("wb")
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def feed(self, until: int) -> None:
        while self.written < until:
            photo = self.photos[self.written % len(self.photos)]
            staged = self.work / "staging" / f"frame-{self.written:06d}.jpg"
            staged.write_bytes(numbered_jpeg(photo, self.written))
            staged.replace(self.inbox / staged.name)  # never half a file in the hot folder
            self.written += 1

    def schedule(self, t: float) -> None:
        """Take each service down or up as its outage schedule says at ``t``."""
        duration = self.args.duration
        for name, outage, service in (
            ("store", self.args.store_outage, self.relay),
            ("broker", self.args.broker_outage, self.broker),
        ):
            down = outage.is_down(t, duration)
            if down and service.running:
                service.down()
                self.outages[name] += 1
            elif not down and not service.running:
                service.up()

    def pending(self) -> int:
        return sum(1 for p in self.inbox.iterdir() if p.is_file())

    def spooled(self) -> int:
        entries = self.work / "state" / "spool" / "entries"
        return len(list(entries.glob("*.entry"))) if entries.is_dir() else 0

    def sample(self, t: float, pid: int) -> None:
        cpu = _cpu_seconds(pid)
        self.log.flush()
        self.samples.append(
            {
                "t_s": round(t, 1),
                "rss_mb": rss_bytes(pid) / MB,
                "cpu_s": cpu,
                "state_mb": dir_bytes(self.work / "state") / MB,
                "spool_mb": dir_bytes(self.work / "state" / "spool") / MB,
                "processed_mb": dir_bytes(self.inbox / "processed") / MB,
                "rejected_mb": dir_bytes(self.inbox / "rejected") / MB,
                "frames_written": self.written,
                "frames_done": self.written - self.pending(),
                "spool_entries": self.spooled(),
                "log_lines": _count_lines(self.args.out / "agent.log"),
                "store_up": int(self.relay.running),
                "broker_up": int(self.broker.running),
            }
        )
        with (self.args.out / "samples.jsonl").open("a") as fh:  # kept if the run dies
            fh.write(json.dumps(self.samples[-1]) + "\n")

    def stop(self) -> None:
        self.relay.down()
        self.moto.down()
        self.broker.down()


def run(args: argparse.Namespace) -> dict[str, object]:
    images = args.images or (DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else FALLBACK_IMAGES)
    photos = [p.read_bytes() for p in sorted(images.glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"bench_soak: no .jpg photos in {images}")
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(args.out)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    (args.out / "samples.jsonl").unlink(missing_ok=True)
    work.mkdir()
    soak = Soak(args, work, photos)
    agent = soak.start(model)
    t0 = time.monotonic()
    next_sample = min(args.sample_every, args.duration / 10)
    try:
        while (t := time.monotonic() - t0) < args.duration:
            if agent.poll() is not None:
                raise SystemExit(f"bench_soak: the agent exited ({agent.returncode}) at {t:.0f} s")
            soak.schedule(t)
            soak.feed(int(t * args.fps) + 1)
            if t >= next_sample:
                soak.sample(t, agent.pid)
                next_sample += args.sample_every
            time.sleep(0.05)
        soak.schedule(args.duration)  # every service up for the drain
        drain_start = time.monotonic()
        while soak.pending() or soak.spooled():
            if time.monotonic() - drain_start > args.drain_timeout:
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - drain_start
        soak.sample(time.monotonic() - t0, agent.pid)
        agent.send_signal(signal.SIGTERM)
        agent.wait(120)
        soak.log.close()
        keys = list(_store_keys(soak.moto.port))
    finally:
        if agent.poll() is None:
            agent.kill()
        soak.stop()
    stats = json.loads((work / "stats.json").read_text())
    return summarize(args, soak, stats, keys, drain_s)


def summarize(
    args: argparse.Namespace, soak: Soak, stats: dict[str, int], keys: list[str], drain_s: float
) -> dict[str, object]:
    images = {k for k in keys if not k.endswith(".json")}
    sidecars = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".json")}
    lines, levels, messages, uploads, not_json = _read_log(args.out / "agent.log")
    hours = args.duration / 3600.0
    warm = [s for s in soak.samples if s["t_s"] >= args.duration / 10] or soak.samples
    sent = stats["feedback_spooled"]
    return {
        "duration_s": args.duration,
        "fps": args.fps,
        "feedback_share": args.feedback_share,
        "store_outages": f"{soak.outages['store']} x {args.store_outage.down_s:.0f} s",
        "broker_outages": f"{soak.outages['broker']} x {args.broker_outage.down_s:.0f} s",
        "frames_written": soak.written,
        "frames_inferred": stats["frames_inferred"],
        "frames_rejected": stats.get("frames_rejected", 0),
        "feedback_sent": sent,
        "feedback_delivered": len(images),
        "feedback_lost": sent - len(images),
        "feedback_dropped": stats["feedback_dropped"],
        "duplicates": (sum(uploads.values()) - len(uploads)) + abs(len(images) - len(sidecars)),
        "upload_failures": stats.get("upload_failures", 0),
        "drain_s": round(drain_s, 1),
        "rss_mb": _trend(soak.samples, warm, "rss_mb"),
        "state_mb": _trend(soak.samples, warm, "state_mb"),
        "processed_mb": _trend(soak.samples, warm, "processed_mb"),
        "cpu_share": _cpu_share(soak.samples),
        "log_lines_per_h": round(lines / hours),
        "error_lines_per_h": round(levels["error"] / hours),
        "warning_lines_per_h": round(levels["warning"] / hours),
        "non_json_lines": not_json,
        "top_messages": [f"{n} x {m}" for m, n in messages.most_common(8)],
        "agent_stats": stats,
        "samples": soak.samples,
    }


def _trend(
    samples: list[dict[str, float]], warm: list[dict[str, float]], key: str
) -> dict[str, float]:
    values = [s[key] for s in samples]
    return {
        "start": round(values[0], 1),
        "max": round(max(values), 1),
        "end": round(values[-1], 1),
        "slope_per_h": round(_slope(warm, key), 1),
    }


def _slope(samples: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of ``key`` against time, per hour."""
    if len(samples) < 2:
        return 0.0
    ts = [s["t_s"] / 3600.0 for s in samples]
    vs = [s[key] for s in samples]
    mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den if den else 0.0


def _cpu_share(samples: list[dict[str, float]]) -> float:
    span = samples[-1]["t_s"] - samples[0]["t_s"]
    return round((samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / span, 3) if span else 0.0


def _read_log(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str], int]:
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    uploads: Counter[str] = Counter()
    lines = not_json = 0
    for line in path.read_text(errors="replace").splitlines():
        lines += 1
        try:
            entry = json.loads(line)
        except ValueError:
            not_json += 1
            continue
        levels[entry.get("level", "?")] += 1
        messages[f"{entry.get('level')}: {entry.get('msg')}"] += 1
        if entry.get("msg") == "feedback image uploaded":
            uploads[entry["key"]] += 1
    return lines, levels, messages, uploads, not_json


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _store_keys(port: int) -> list[str]:
    from qcloop.settings import StoreSettings
    from qcloop.storage import open_store

    endpoint = f"http://127.0.0.1:{port}"
    settings = StoreSettings.model_validate(
        {
            "kind": "s3",
            "endpoint": endpoint,
            "bucket": "soak",
            "access_key": "soak",
            "secret_key": "soak",
        }
    )
    return list(open_store(settings).list("raw/"))


def print_table(r: dict[str, object]) -> None:
    def trend(key: str) -> str:
        v = r[key]
        assert isinstance(v, dict)
        return f"{v['start']} / {v['max']} / {v['end']}, {v['slope_per_h']:+} per h"

    rows = [
        (
            "run",
            f"{r['duration_s']:.0f} s at {r['fps']} fps; store down {r['store_outages']}, "
            f"broker down {r['broker_outages']}",
        ),
        ("frames written / inferred", f"{r['frames_written']} / {r['frames_inferred']}"),
        (
            "feedback sent / delivered / lost",
            f"{r['feedback_sent']} / {r['feedback_delivered']} / {r['feedback_lost']}",
        ),
        ("duplicates in S3", str(r["duplicates"])),
        ("RSS MB start / max / end", trend("rss_mb")),
        ("state dir MB start / max / end", trend("state_mb")),
        ("processed/ MB start / max / end", trend("processed_mb")),
        ("agent CPU (cores)", str(r["cpu_share"])),
        (
            "log / error / warning lines per h",
            f"{r['log_lines_per_h']} / {r['error_lines_per_h']} / {r['warning_lines_per_h']}",
        ),
        ("non-JSON log lines", str(r["non_json_lines"])),
        ("drain after the run", f"{r['drain_s']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'soak':{width}} | figure |\n| {'-' * width} | --- |")
    for key, value in rows:
        print(f"| {key:{width}} | {value} |")
    print("most logged:", *r["top_messages"], sep="\n  ")  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"samples and figures: {args.out / 'soak.json'}; agent log: {args.out / 'agent.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

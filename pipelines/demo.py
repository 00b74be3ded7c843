"""The quickstart: the whole loop on one machine, on the embedded default.

    data (synthetic or a YOLO folder) -> dataset version (DVC) -> training pipeline
    (kfp.local: train, export ONNX, evaluate, gate, register in MLflow) -> approval ->
    release over MQTT -> edge agent swaps to the model, inspects frames, sends
    low-confidence frames back to the raw store -> summary (demo-summary.json)

All state lives under ``--home`` (default ``.qcloop/demo``), which is reset on
every run, so the demo is repeatable and leaves the project's own ``data.dvc``
alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcloop.contracts import Thresholds
from qcloop.errors import PipelineError
from qcloop.settings import DvcSettings, MlflowSettings, MqttSettings, Settings, StoreSettings
from qcloop.storage import list_raw_images, open_store

STAGES = 6


@dataclass(frozen=True)
class DemoOptions:
    """Knobs of the demo (``qcloop demo --help``)."""

    data: Path | None = None
    home: Path = Path(".qcloop/demo")
    epochs: int = 5
    imgsz: int = 320
    frames: int = 24
    shots: int = 12
    summary: Path = Path("demo-summary.json")
    mqtt_port: int = 0


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEPS = "data|train|export|parity|evaluate|champion|gate|register|pipeline"
_PROGRESS = re.compile(rf"^\s*(\[({_STEPS})\]|.*Task '.*' finished)")


@contextmanager
def _progress_only(log_path: Path) -> Iterator[None]:
    """Send everything written to fd 1/2 (steps are subprocesses) to ``log_path``; echo progress.

    kfp.local prints each step's full executor input and output; the demo keeps
    those in the log and shows the one-line progress of each step.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    console = os.fdopen(os.dup(saved[0]), "w")

    def pump() -> None:
        with open(log_path, "a") as log, os.fdopen(read_fd, errors="replace") as pipe:
            for line in pipe:
                log.write(line)
                plain = _ANSI.sub("", line).strip()
                if _PROGRESS.match(plain):
                    console.write(f"      {plain}\n")
                    console.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        thread.join(timeout=10)
        for fd in saved:
            os.close(fd)
        console.close()


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, number: int, name: str) -> Iterator[None]:
        print(f"\n[{number}/{STAGES}] {name}", flush=True)
        began = time.monotonic()
        yield
        self.stages[name] = round(time.monotonic() - began, 1)
        print(f"      done in {self.stages[name]:.1f} s", flush=True)


def demo_settings(home: Path, mqtt_url: str) -> Settings:
    """Settings of the embedded default, all under ``home``."""
    home = home.resolve()
    return Settings(
        home=home,
        workspace=home / "workspace",
        store=StoreSettings(path=home / "store"),
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{home / 'mlflow.db'}"),
        dvc=DvcSettings(remote=str(home / "dvc-remote")),
        mqtt=MqttSettings(url=mqtt_url, fleet="demo"),
    )


def _edge_config(settings: Settings, home: Path, inbox: Path | None) -> Path:
    source = (
        f'kind = "folder"\npath = "{inbox}"\nprocessed = "move"\npoll_interval_s = 0.2\n'
        if inbox
        else 'kind = "simulated"\nseed = 7\ninterval_s = 0.0\n'
    )
    path = home / "edge.toml"
    path.write_text(
        f'device_id = "demo-cam-1"\nfleet = "{settings.mqtt.fleet}"\n'
        f'model_dir = "{home / "edge" / "models"}"\n\n[source]\n{source}\n'
        f'[mqtt]\nurl = "{settings.mqtt.url}"\n\n'
        f'[store]\nkind = "local"\npath = "{settings.store.path}"\n'
    )
    return path


def _feed_inbox(dataset_dir: Path, inbox: Path, frames: int) -> int:
    """Drop real test-split images into the hot folder (write + rename: atomic)."""
    from qcloop.contracts import DatasetManifest

    manifest = DatasetManifest.load(dataset_dir / "manifest.json")
    ordered = sorted(manifest.images, key=lambda i: (i.split != "test", i.file))[:frames]
    for img in ordered:
        tmp = inbox / f".{Path(img.file).name}.part"
        shutil.copyfile(dataset_dir / img.file, tmp)
        tmp.rename(inbox / Path(img.file).name)
    return len(ordered)


def _start_agent(config: Path, frames: int, stats: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "edge_agent",
        "run",
        "--config",
        str(config),
        "--max-frames",
        str(frames),
        "--timeout",
        "300",
        "--stats-out",
        str(stats),
    ]
    log = open(config.with_name("edge-agent.log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the loop end to end; print progress and a summary; return the summary."""
    from components.registry import approve
    from components.release import build_release, publish_release
    from pipelines.broker import EmbeddedBroker, free_port
    from pipelines.runs import run_training
    from qcloop.dataset import import_yolo_folder
    from qcloop.synthetic import generate_yolo_dataset

    clock, home = _Clock(), options.home.resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = options.mqtt_port or free_port()
    with EmbeddedBroker(port) as broker:
        settings = demo_settings(home, broker.url)
        print(f"qcloop demo: state in {home}, {broker.kind} broker on {broker.url}")
        with clock.stage(1, "dataset version (raw store + DVC)"):
            source = options.data or generate_yolo_dataset(
                home / "synthetic", shots=options.shots, seed=0
            )
            manifest, _ = import_yolo_folder(settings, Path(source))
            print(
                f"      {manifest.version}: {len(manifest.images)} images, "
                + ", ".join(f"{s} {c.images}" for s, c in manifest.counts.items())
            )
        with clock.stage(2, f"training pipeline (kfp.local, {options.epochs} epochs)"):
            log = home / "pipeline.log"
            print(f"      step logs: {log}")
            try:
                with _progress_only(log):
                    trained = run_training(
                        settings,
                        dataset_version=manifest.version,
                        epochs=options.epochs,
                        imgsz=options.imgsz,
                        batch=16,
                        min_map50_95=0.0,
                    )
            except PipelineError as exc:
                raise PipelineError(f"{exc} (the steps' output is in {log})") from None
            if not trained.get("registered"):
                raise PipelineError(f"the gate refused the model: {trained['gate_reason']}")
            record = trained["model_record"]
            scores = record["metrics"]
            print(
                f"      registered {record['name']} v{record['version']}: "
                f"mAP50 {scores['map50']:.3f}, mAP50-95 {scores['map50_95']:.3f}"
            )
        with clock.stage(3, "approval (MLflow alias + tags)"):
            approve(
                tracking_uri=settings.mlflow.tracking_uri,
                model_name=settings.mlflow.model_name,
                version=str(record["version"]),
                approved_by="qcloop-demo",
            )
            print(f"      alias '{settings.mlflow.production_alias}' -> v{record['version']}")
        with clock.stage(4, "edge agent starts (waits for a release)"):
            inbox = (home / "edge" / "inbox") if options.data else None
            if inbox:
                inbox.mkdir(parents=True)
            stats_path = home / "edge" / "stats.json"
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            agent = _start_agent(_edge_config(settings, home, inbox), options.frames, stats_path)
        with clock.stage(5, "release over MQTT (retained, per fleet)"):
            message = build_release(
                settings,
                released_by="qcloop-demo",
                thresholds=Thresholds(confidence=0.25, feedback_below=0.5),
            )
            topic = publish_release(settings, message)
            print(
                f"      {message.model.name}/{message.model.version} on {topic}, "
                f"sha256 {message.sha256[:12]}..., {message.size} bytes"
            )
        with clock.stage(6, f"edge agent: swap, inspect {options.frames} frames, feedback"):
            if inbox:
                fed = _feed_inbox(settings.workspace / "data", inbox, options.frames)
                print(f"      dropped {fed} real images into the hot folder {inbox}")
            try:
                agent.wait(timeout=360)
            except subprocess.TimeoutExpired:
                agent.kill()
                raise PipelineError("the edge agent did not finish; see edge-agent.log") from None
            if agent.returncode != 0 or not stats_path.exists():
                log = (home / "edge-agent.log").read_text()[-2000:]
                raise PipelineError(f"edge agent exited with {agent.returncode}:\n{log}")
            stats = json.loads(stats_path.read_text())
    feedback = [s for s in list_raw_images(open_store(settings.store)) if s.reason != "import"]
    summary = {
        "dataset_version": manifest.version,
        "dataset_images": len(manifest.images),
        "model_name": record["name"],
        "model_version": str(record["version"]),
        "metrics": record["metrics"],
        "serving_model_version": (stats.get("serving_model") or {}).get("version"),
        "frames_inferred": stats.get("frames_inferred", 0),
        "feedback_images": len(feedback),
        "model_swaps": stats.get("swaps", 0),
        "broker": broker.kind,
        "home": str(home),
        "seconds": clock.stages | {"total": round(time.monotonic() - clock.start, 1)},
    }
    options.summary.write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, options.summary)
    return summary


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    m = summary["metrics"]
    print("\n" + "=" * 64)
    print("qcloop demo: the loop closed")
    print(
        f"  dataset version      {summary['dataset_version']} ({summary['dataset_images']} images)"
    )
    print(
        f"  model                {summary['model_name']} v{summary['model_version']} "
        f"(mAP50 {m['map50']:.3f}, mAP50-95 {m['map50_95']:.3f}, test images {m['images']})"
    )
    print(
        f"  edge agent serving   v{summary['serving_model_version']} "
        f"after {summary['model_swaps']} swap(s)"
    )
    print(f"  frames inferred      {summary['frames_inferred']}")
    print(f"  feedback images      {summary['feedback_images']} (raw store, next labelling tasks)")
    print(f"  total time           {summary['seconds']['total']:.0f} s")
    print(f"  summary written to   {path}")
    print("=" * 64)

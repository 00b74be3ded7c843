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
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.local import STEPS_LOGGER
from pipelines.local import log as local_log
from qcloop.contracts import Thresholds
from qcloop.errors import PipelineError
from qcloop.logs import PROJECT_LOGGERS, StderrHandler
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


_TASK_END = re.compile(r".*Task '.*' finished")  # kfp.local's line when a step ends
_STEP_RECORD = re.compile(r"^\s*\[KFP Executor [^\]]*\]:\s*")  # kfp's executor format
_KFP_OWN = re.compile(
    "Looking for component|Loading KFP component|Got executor_input|Wrote executor output"
)
_FILE_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"

log = logging.getLogger(__name__)


def _progress(line: str) -> str | None:
    """What the console shows of a line of the pipeline's log, if anything: a step's log
    record (kfp's own bookkeeping left out), or a task's end."""
    record = _STEP_RECORD.match(line)
    if record:
        said = line[record.end() :]
        return None if _KFP_OWN.match(said) else said
    return line.strip() if _TASK_END.match(line) else None


def _on_console(record: logging.LogRecord) -> bool:
    """The demo's own lines, the local run's, the pipeline's progress, and warnings."""
    if record.name in (__name__, local_log.name) or record.levelno >= logging.WARNING:
        return True
    return record.name == STEPS_LOGGER and _progress(record.getMessage()) is not None


class _ConsoleFormatter(logging.Formatter):
    """The demo's lines as they are; the pipeline's indented under their stage."""

    def format(self, record: logging.LogRecord) -> str:
        """``record``'s message, or its progress part, indented unless the demo said it."""
        message = record.getMessage()
        if record.name == __name__:
            return message
        shown = _progress(message) if record.name == STEPS_LOGGER else message
        return f"      {shown}"


@dataclass
class _LoggerState:
    """What ``_route`` changes on one logger, to put it back."""

    logger: logging.Logger
    handlers: list[logging.Handler]
    level: int
    propagate: bool

    @classmethod
    def of(cls, logger: logging.Logger) -> _LoggerState:
        return cls(logger, logger.handlers[:], logger.level, logger.propagate)

    def restore(self) -> None:
        self.logger.handlers[:] = self.handlers
        self.logger.setLevel(self.level)
        self.logger.propagate = self.propagate


def _route(logger: logging.Logger, handlers: list[logging.Handler], level: int) -> _LoggerState:
    """Give ``logger`` these handlers only (no propagation) and ``level``; return its state."""
    saved = _LoggerState.of(logger)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = False
    return saved


def _libraries_own_handlers() -> list[logging.Logger]:
    """The loggers that libraries gave console handlers of their own (mlflow, alembic,
    ultralytics, torch, ...): their records never reach the root logger."""
    return [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
        and logger.name.split(".")[0] not in PROJECT_LOGGERS
        and any(not isinstance(h, logging.NullHandler) for h in logger.handlers)
    ]


def _import_libraries() -> None:
    """Import the libraries that this process uses during the demo and that set up their
    loggers' handlers on import, so that ``_demo_logging`` finds those handlers."""
    import mlflow  # noqa: F401

    from components.yolo_env import configure_offline

    configure_offline()  # imports ultralytics, as the training pipeline would


@contextmanager
def _demo_logging(log_path: Path) -> Iterator[None]:
    """Within: every record, this project's and the libraries', goes to ``log_path``;
    stderr shows only the demo's own lines, the pipeline's progress and warnings.

    kfp.local logs each step's whole executor input and output; the demo keeps those in
    the log file and shows one line per step.
    """
    to_file = logging.FileHandler(log_path)
    to_file.setFormatter(logging.Formatter(_FILE_FORMAT))
    console = StderrHandler()
    console.addFilter(_on_console)
    console.setFormatter(_ConsoleFormatter())
    saved = [_route(logging.getLogger(), [to_file], logging.INFO)]
    saved += [
        _route(logging.getLogger(name), [to_file, console], logging.INFO)
        for name in PROJECT_LOGGERS
    ]
    saved += [_route(lib, [to_file], lib.level) for lib in _libraries_own_handlers()]
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for state in saved:
            state.restore()
        to_file.close()


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, number: int, name: str) -> Iterator[None]:
        log.info("[%d/%d] %s", number, STAGES, name)
        began = time.monotonic()
        yield
        self.stages[name] = round(time.monotonic() - began, 1)
        log.info("      done in %.1f s", self.stages[name])


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
    """Run the loop end to end; log progress, print a summary; return the summary.

    Everything said on the way goes to ``demo.log`` under the home folder; stderr shows
    the progress, stdout the summary.
    """
    home = options.home.resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    _import_libraries()
    with _demo_logging(home / "demo.log"):
        summary = _run_loop(options, home)
    options.summary.write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, options.summary)
    return summary


def _run_loop(options: DemoOptions, home: Path) -> dict[str, Any]:
    """The six stages, in a fresh ``home``; return the summary."""
    from components.audit import approve
    from components.release import build_release, publish_release
    from pipelines.broker import EmbeddedBroker, free_port
    from pipelines.runs import run_training
    from qcloop.dataset import import_yolo_folder
    from qcloop.synthetic import generate_yolo_dataset

    clock = _Clock()
    port = options.mqtt_port or free_port()
    with EmbeddedBroker(port) as broker:
        settings = demo_settings(home, broker.url)
        log.info("qcloop demo: state in %s, %s broker on %s", home, broker.kind, broker.url)
        log.info("log: %s", home / "demo.log")
        with clock.stage(1, "dataset version (raw store + DVC)"):
            source = options.data or generate_yolo_dataset(
                home / "synthetic", shots=options.shots, seed=0
            )
            manifest, _ = import_yolo_folder(settings, Path(source))
            counts = ", ".join(f"{s} {c.images}" for s, c in manifest.counts.items())
            log.info("      %s: %d images, %s", manifest.version, len(manifest.images), counts)
        with clock.stage(2, f"training pipeline (kfp.local, {options.epochs} epochs)"):
            try:
                trained = run_training(
                    settings,
                    dataset_version=manifest.version,
                    epochs=options.epochs,
                    imgsz=options.imgsz,
                    min_map50_95=0.0,  # a smoke run of the loop: the gate lets it through
                )
            except PipelineError as exc:
                raise PipelineError(
                    f"{exc} (the steps' output is in {home / 'demo.log'})"
                ) from None
            if not trained.get("registered"):
                raise PipelineError(f"the gate refused the model: {trained['gate_reason']}")
            record = trained["model_record"]
            scores = record["metrics"]
            log.info(
                "      registered %s v%s: mAP50 %.3f, mAP50-95 %.3f",
                record["name"],
                record["version"],
                scores["map50"],
                scores["map50_95"],
            )
        with clock.stage(3, "approval (MLflow alias + tags)"):
            approve(
                tracking_uri=settings.mlflow.tracking_uri,
                model_name=settings.mlflow.model_name,
                version=str(record["version"]),
                approved_by="qcloop-demo",
            )
            log.info("      alias '%s' -> v%s", settings.mlflow.production_alias, record["version"])
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
            log.info(
                "      %s/%s on %s, sha256 %s..., %d bytes",
                message.model.name,
                message.model.version,
                topic,
                message.sha256[:12],
                message.size,
            )
        with clock.stage(6, f"edge agent: swap, inspect {options.frames} frames, feedback"):
            if inbox:
                fed = _feed_inbox(settings.workspace / "data", inbox, options.frames)
                log.info("      dropped %d real images into the hot folder %s", fed, inbox)
            try:
                agent.wait(timeout=360)
            except subprocess.TimeoutExpired:
                agent.kill()
                raise PipelineError("the edge agent did not finish; see edge-agent.log") from None
            if agent.returncode != 0 or not stats_path.exists():
                tail = (home / "edge-agent.log").read_text()[-2000:]
                raise PipelineError(f"edge agent exited with {agent.returncode}:\n{tail}")
            stats = json.loads(stats_path.read_text())
    feedback = [s for s in list_raw_images(open_store(settings.store)) if s.reason != "import"]
    return {
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


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    """The demo's result on stdout: what each stage left behind."""
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

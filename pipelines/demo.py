"""The quickstart: the whole loop on one machine, on the embedded default.

    data (synthetic or a YOLO folder) -> dataset version (DVC) -> training pipeline
    (kfp.local: train, export ONNX, evaluate, gate, register in MLflow) -> approval ->
    release over MQTT -> edge agent swaps to the model, inspects frames, sends
    low-confidence frames back to the raw store
    [-> with --rounds N, each further round: feedback -> Label Studio tasks -> a
    stand-in annotator labels them -> labelling pipeline (next dataset version,
    training, gate against production) -> release -> the same agent swaps]
    -> summary (demo-summary.json) and loop report (demo-report.md / .html)

The rounds themselves are in ``pipelines.demo_loop``; this module sets up logging,
runs them and reports. All state lives under ``--home`` (default ``.qcloop/demo``),
which is reset on every run, so the demo is repeatable and leaves the project's own
``data.dvc`` alone.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from pipelines.local import STEPS_LOGGER
from pipelines.local import log as local_log
from pipelines.loop_report import write_reports
from qcloop.errors import PipelineError
from qcloop.logs import PROJECT_LOGGERS, StderrHandler
from qcloop.settings import (
    DvcSettings,
    LabelStudioSettings,
    MlflowSettings,
    MqttSettings,
    ReleaseSettings,
    Settings,
    StoreSettings,
)

if TYPE_CHECKING:
    from pipelines.demo_data import LoopData
    from pipelines.demo_loop import Clock

REPO_ROOT = Path(__file__).resolve().parents[1]
AGENT_TIMEOUT_S = 3600  # the agent runs for the whole demo; stopped by SIGTERM at the end


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
    rounds: int = 1
    # a smoke run of the loop: the gate lets every model through, and says how it compared
    min_map50_95: float = 0.0
    tolerance: float = 1.0


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

    from qcloop.yolo_env import configure_offline

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


def demo_settings(home: Path, mqtt_url: str) -> Settings:
    """Settings of the embedded default, all under ``home``; releases are signed with a
    key pair made there (``keys/release.key``; the edge agent trusts ``release.pub``), and
    approvals with the demo approver's (``keys/approver/qcloop-demo.key``; the bridge's
    ``release.approvers``)."""
    from pipelines.demo_loop import DEMO_USER
    from qcloop.signing import generate_keypair

    home = home.resolve()
    signing_key = home / "keys" / "release.key"
    if not signing_key.exists():
        generate_keypair(signing_key.parent)
    approver = home / "keys" / "approver" / f"{DEMO_USER}.pub"
    if not approver.exists():
        generate_keypair(approver.parent, DEMO_USER)
    return Settings(
        home=home,
        workspace=home / "workspace",
        store=StoreSettings(path=home / "store"),
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{home / 'mlflow.db'}"),
        dvc=DvcSettings(remote=str(home / "dvc-remote")),
        mqtt=MqttSettings(url=mqtt_url, fleet="demo"),
        release=ReleaseSettings(signing_key=signing_key, approvers=[approver]),
    )


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
    reports = write_reports(summary["rounds"], options.summary.with_name("demo-report"))
    _print_summary(summary, options.summary, reports)
    if "stopped" in summary:
        raise PipelineError(
            f"the demo stopped after round {len(summary['rounds'])}: {summary['stopped']}"
        )
    return summary


def _label_studio_binary(rounds: int) -> Path | None:
    """Label Studio's binary when later rounds need it; None (and a warning) if missing."""
    if rounds < 2:
        return None
    from qcloop_labelling.errors import LabelStudioUnavailable
    from qcloop_labelling.server import find_binary

    try:
        return find_binary(REPO_ROOT)
    except LabelStudioUnavailable as exc:
        log.warning(
            "rounds 2..%d need Label Studio: %s; round 1 runs, then the demo stops", rounds, exc
        )
        return None


def _run_loop(options: DemoOptions, home: Path) -> dict[str, Any]:
    """Round 1, then the labelling rounds, in a fresh ``home``; return the summary."""
    from pipelines.broker import EmbeddedBroker, free_port
    from pipelines.demo_edge import EdgeBox
    from pipelines.demo_loop import Clock, RoundParams, first_round, labelling_round
    from qcloop_labelling.server import INSTALL_HINT

    clock = Clock()
    params = RoundParams(options.epochs, options.imgsz, options.min_map50_95, options.tolerance)
    label_studio = _label_studio_binary(options.rounds)
    data = _loop_data(options, home)
    port = options.mqtt_port or free_port()
    rounds: list[dict[str, Any]] = []
    stopped: str | None = None
    with EmbeddedBroker(port) as broker, ExitStack() as stack:
        settings = demo_settings(home, broker.url)
        log.info("qcloop demo: state in %s, %s broker on %s", home, broker.kind, broker.url)
        log.info("log: %s", home / "demo.log")
        edge = EdgeBox(settings, home)
        edge.start(timeout_s=AGENT_TIMEOUT_S)
        stack.callback(edge.stop, check=False)  # after a failure; a no-op after stop()
        rounds.append(first_round(settings, data, params, edge, clock, options.rounds))
        if options.rounds > 1 and label_studio is None:
            stopped = f"Label Studio is not installed: {INSTALL_HINT}, then run the demo again"
        elif label_studio is not None:
            settings = _with_label_studio(stack, settings, label_studio, home)
            feedback = set(rounds[0]["feedback_sha256"])
            for number in range(2, options.rounds + 1):
                done = labelling_round(
                    number,
                    settings,
                    data,
                    params,
                    edge,
                    clock,
                    options.rounds,
                    production=rounds[-1]["production_version"],
                    feedback_so_far=feedback,
                )
                feedback |= set(done["feedback_sha256"])
                rounds.append(done)
        agent = edge.stop()
    return _summary(rounds, agent, broker.kind, home, clock, stopped)


def _loop_data(options: DemoOptions, home: Path) -> LoopData:
    from pipelines.demo_data import folder_loop_data, synthetic_loop_data

    if options.data is not None:
        return folder_loop_data(
            options.data, home / "data", frames=options.frames, rounds=options.rounds
        )
    return synthetic_loop_data(
        home, shots=options.shots, frames=options.frames, rounds=options.rounds
    )


def _with_label_studio(stack: ExitStack, settings: Settings, binary: Path, home: Path) -> Settings:
    """Start Label Studio for the demo (as the tests do); settings that point at it."""
    from pipelines.broker import free_port
    from qcloop_labelling.server import local_server

    log.info("[labelling] starting Label Studio (first start ~1 min)")
    server = stack.enter_context(local_server(binary, home / "label-studio", free_port()))
    log.info("      Label Studio at %s (data in %s)", server.url, server.data_dir)
    studio = LabelStudioSettings(
        url=server.url, token=SecretStr(server.token), project_title="qcloop demo", assist=False
    )
    return settings.model_copy(update={"label_studio": studio})


def _summary(
    rounds: list[dict[str, Any]],
    agent: dict[str, Any],
    broker: str,
    home: Path,
    clock: Clock,
    stopped: str | None,
) -> dict[str, Any]:
    """The demo's summary: the last round's figures at the top, then every round."""
    last = rounds[-1]
    for row in rounds:
        row.pop("feedback_sha256", None)
    production = last["production_version"]
    summary: dict[str, Any] = {
        "dataset_version": last["dataset_version"],
        "dataset_images": last["dataset_images"],
        "model_name": next(r["model_name"] for r in rounds if r.get("model_name")),
        "model_version": production,
        "metrics": next(r["metrics"] for r in reversed(rounds) if r["model_version"] == production),
        "serving_model_version": last["serving_model_version"],
        "frames_inferred": sum(r["frames_inferred"] for r in rounds),
        "feedback_images": sum(r["feedback_images"] for r in rounds),
        "model_swaps": agent.get("swaps", 0),
        "rounds": rounds,
        "broker": broker,
        "home": str(home),
        "seconds": clock.stages | {"total": clock.total()},
    }
    if stopped:
        summary["stopped"] = stopped
    return summary


def _print_summary(summary: dict[str, Any], path: Path, reports: tuple[Path, Path]) -> None:
    """The demo's result on stdout: what each round left behind."""
    m = summary["metrics"]
    print("\n" + "=" * 72)
    print(
        "qcloop demo: the loop closed"
        + (f" {len(summary['rounds'])} times" if len(summary["rounds"]) > 1 else "")
    )
    print(
        f"  dataset version      {summary['dataset_version']} ({summary['dataset_images']} images)"
    )
    print(
        f"  model in production  {summary['model_name']} v{summary['model_version']} "
        f"(mAP50 {m['map50']:.3f}, mAP50-95 {m['map50_95']:.3f}, test images {m['images']})"
    )
    print(
        f"  edge agent serving   v{summary['serving_model_version']} "
        f"after {summary['model_swaps']} swap(s)"
    )
    print(f"  frames inferred      {summary['frames_inferred']}")
    print(f"  feedback images      {summary['feedback_images']} (raw store, next labelling tasks)")
    for row in summary["rounds"]:
        model = f"v{row['model_version']}" if row["model_version"] else "none registered"
        print(
            f"  round {row['round']}: {row['dataset_version']} "
            f"(parent {row['parent_version'] or '-'}), "
            f"{row['images_labelled']} labelled -> model {model}, gate "
            f"{'passed' if row['gate_passed'] else 'refused'}; edge served "
            f"v{row['serving_model_version']}, sent back {row['feedback_images']}"
        )
    print(f"  total time           {summary['seconds']['total']:.0f} s")
    print(f"  summary written to   {path}")
    print(f"  loop report          {reports[0]} ({reports[1].name})")
    print("=" * 72)

"""``qcloop-edge``: run the agent, infer on files, check a config.

    qcloop-edge infer --model M.onnx [--json] [--conf 0.25] [--iou 0.7] [--threads N] IMAGE...
    qcloop-edge run --config FILE [--model M.onnx] [--max-frames N] [--timeout S]
                    [--stats-out FILE.json]
    qcloop-edge check-config --config FILE
    qcloop-edge status --config FILE [--json] [--timeout S]
    qcloop-edge verdict --config FILE --frame NAME|SHA256 --verdict missed_defect|false_alarm
                        [--by NAME] [--note TEXT]

Exit codes: 0 ok, 1 a bad config, model or image, no state, broker down (named on
stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config import EdgeConfig, OperatorConfig, load_config, load_operator_config
from edge_agent.errors import ImageError
from edge_agent.inference import Detector
from edge_agent.link import publish_verdict, read_retained_state
from edge_agent.logs import json_logging
from edge_agent.memory import set_up_heap
from edge_agent.verdicts import Verdict
from qcloop.contracts import Detection
from qcloop.cores import cpu_threads
from qcloop.devices import DeviceState
from qcloop.errors import QcloopError
from qcloop.params import CONFIDENCE, NMS_IOU

PROG = "qcloop-edge"


def detection_json(detection: Detection) -> dict[str, Any]:
    """``{"label", "score", "box": [x1, y1, x2, y2]}``, rounded for reading."""
    return {
        "label": detection.label,
        "score": round(detection.score, 4),
        "box": [round(v, 2) for v in detection.box],
    }


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def cmd_infer(args: argparse.Namespace) -> int:
    """Detect on each image; one JSON line (``--json``) or table rows per image, in order.

    As the agent runs by default: ``--threads`` images at once (the cores this process may
    use), each on one onnxruntime thread of one shared session, decoding of one overlapping
    the model's run on another.
    """
    workers = args.threads or cpu_threads()
    set_up_heap()  # as the agent does before its threads start (edge_agent.memory)
    try:
        detector = Detector(
            args.model, confidence=args.conf, iou=args.iou, threads=1, rect=not args.square
        )
    except QcloopError as exc:
        return _fail(str(exc))

    def detect(image: str) -> list[Detection] | ImageError:
        try:
            return detector.detect(Path(image))
        except ImageError as exc:
            return exc

    rc = 0
    if not args.json:
        print(f"{'IMAGE':40} {'LABEL':12} {'SCORE':>6}  BOX (x1, y1, x2, y2)")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer") as pool:
        for image, detections in zip(args.images, pool.map(detect, args.images), strict=True):
            if isinstance(detections, ImageError):
                rc = _fail(str(detections))
            elif args.json:
                rows = [detection_json(d) for d in detections]
                print(json.dumps({"image": image, "detections": rows}), flush=True)
            else:
                print_rows(image, detections)
    return rc


def print_rows(image: str, detections: list[Detection]) -> None:
    """Table rows of one image (one per box, or one saying there is none)."""
    if not detections:
        print(f"{image:40} {'-':12} {'':>6}  (no detections)")
    for d in detections:
        box = ", ".join(f"{v:.1f}" for v in d.box)
        print(f"{image:40} {d.label:12} {d.score:6.3f}  ({box})")


def _load(path: Path) -> EdgeConfig | int:
    try:
        return load_config(path)
    except QcloopError as exc:
        return _fail(str(exc))


def _load_operator(path: Path) -> OperatorConfig | int:
    """The device and broker only: status and verdict need no store or source secrets."""
    try:
        return load_operator_config(path)
    except QcloopError as exc:
        return _fail(str(exc))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config; print it with secrets masked."""
    config = _load(args.config)
    if isinstance(config, int):
        return config
    print(json.dumps(config.masked(), indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the device's retained state (heartbeat) as the broker holds it."""
    config = _load_operator(args.config)
    if isinstance(config, int):
        return config
    try:
        state = read_retained_state(config, timeout=args.timeout)
    except QcloopError as exc:
        return _fail(str(exc))
    if state is None:
        return _fail(
            f"no retained state for device '{config.device_id}' on {config.mqtt.url} "
            f"after {args.timeout} s: has the agent ever connected to this broker?"
        )
    if args.json:
        print(state.model_dump_json())
    else:
        print_state(state)
    return 0


def print_state(state: DeviceState) -> None:
    """The state as aligned ``key: value`` lines."""
    model = f"{state.model.name} {state.model.version}" if state.model else "-"
    if state.model and state.model_on_trial_since:
        model += f" (on trial since {state.model_on_trial_since.isoformat(timespec='seconds')})"
    rows = {
        "device": f"{state.device_id} (fleet {state.fleet})",
        "status": f"{state.status} since {state.since.isoformat(timespec='seconds')}",
        "model": model,
        "frames": str(state.frames),
        "fps": f"{state.fps:.2f}",
        "latency p50/p95": f"{_ms(state.latency_p50_ms)} / {_ms(state.latency_p95_ms)}",
        "spool": f"{state.spool_depth} images, {state.spool_bytes} bytes",
        "disk free": _size(state.disk_free_bytes),
        "releases refused": _refused(state),
        "models rejected": _rejected(state),
        "upload failures": str(state.upload_failures),
        "frames rejected": str(state.frames_rejected),
        "mqtt dropped": str(state.mqtt_dropped),
        "errors (all)": str(state.errors),
        "updated": state.updated_at.isoformat(timespec="seconds"),
    }
    for key, value in rows.items():
        print(f"{key + ':':17} {value}")


def _refused(state: DeviceState) -> str:
    last = state.release_last_error
    return f"{state.releases_refused}" + (f" (last: {last})" if last else "")


def _rejected(state: DeviceState) -> str:
    last = state.model_last_rejected
    return f"{state.models_rejected}" + (f" (last: {last})" if last else "")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


@contextmanager
def _stop_on_signals(agent: Agent) -> Iterator[None]:
    """SIGINT/SIGTERM ask the agent to stop cleanly (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = lambda _signum, _frame: agent.stop()  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent; print the AgentStats JSON at the end."""
    config = _load(args.config)
    if isinstance(config, int):
        return config
    with json_logging(getattr(logging, args.log_level.upper())):
        logging.getLogger("edge_agent").info("config loaded", extra={"config": config.masked()})
        try:
            agent = Agent(config, initial_model=args.model)
            with _stop_on_signals(agent):
                stats = agent.run(max_frames=args.max_frames, timeout_s=args.timeout)
        except (QcloopError, OSError) as exc:  # inside the JSON log: a JSON line too
            logging.getLogger("edge_agent").error("agent stopped", extra={"error": str(exc)})
            return 1
    text = stats.model_dump_json()
    print(text, flush=True)
    if args.stats_out:
        Path(args.stats_out).write_text(text + "\n")
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    """Publish an operator verdict on a recent frame to the device."""
    config = _load_operator(args.config)
    if isinstance(config, int):
        return config
    try:
        verdict = Verdict(frame=args.frame, verdict=args.verdict, by=args.by, note=args.note)
    except ValueError as exc:
        return _fail(f"bad verdict: {exc}")
    try:
        publish_verdict(config, verdict.model_dump_json())
    except QcloopError as exc:
        return _fail(str(exc))
    print(f"verdict {verdict.verdict} on {verdict.frame} sent to {config.device_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qcloop-edge``."""
    parser = argparse.ArgumentParser(prog=PROG, description="qcloop shop-floor edge agent")
    sub = parser.add_subparsers(dest="command", required=True)

    infer = sub.add_parser("infer", help="detect on image files with an ONNX model")
    infer.add_argument("--model", type=Path, required=True, help="YOLOv8 ONNX file")
    infer.add_argument("--json", action="store_true", help="one JSON line per image")
    infer.add_argument(
        "--conf", type=float, default=CONFIDENCE, help="confidence threshold (the evaluation's)"
    )
    infer.add_argument(
        "--iou", type=float, default=NMS_IOU, help="NMS IoU threshold (the evaluation's)"
    )
    infer.add_argument(
        "--threads",
        type=int,
        help="images inferred at once, one onnxruntime thread each (default: the cores "
        f"this process may use, {cpu_threads()})",
    )
    infer.add_argument(
        "--square",
        action="store_true",
        help="dynamic-input models: pad every frame to the square input size "
        "(default: the smallest canvas of stride multiples, like ultralytics' rect)",
    )
    infer.add_argument("images", nargs="+", metavar="IMAGE")
    infer.set_defaults(func=cmd_infer)

    run = sub.add_parser("run", help="run the agent (MQTT release -> infer -> feedback)")
    run.add_argument("--config", type=Path, required=True, help="edge TOML file")
    run.add_argument("--model", type=Path, help="serve this ONNX until a release arrives")
    run.add_argument("--max-frames", type=int, help="stop after N inferred frames")
    run.add_argument("--timeout", type=float, help="stop after S seconds")
    run.add_argument("--stats-out", type=Path, help="also write the stats JSON here")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config, print it (secrets masked)")
    check.add_argument("--config", type=Path, required=True, help="edge TOML file")
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="print the device's retained state from the broker")
    status.add_argument("--config", type=Path, required=True, help="edge TOML file")
    status.add_argument("--json", action="store_true", help="the DeviceState JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="wait this long for it")
    status.set_defaults(func=cmd_status)

    verdict = sub.add_parser("verdict", help="send a recent frame back with an operator verdict")
    verdict.add_argument("--config", type=Path, required=True, help="edge TOML file")
    verdict.add_argument("--frame", required=True, help="image name or sha256 of the frame")
    verdict.add_argument("--verdict", required=True, choices=["missed_defect", "false_alarm"])
    verdict.add_argument("--by", default="operator", help="who says so (no ':' or spaces)")
    verdict.add_argument("--note", default="", help="free text (logged by the agent)")
    verdict.set_defaults(func=cmd_verdict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qcloop-edge``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    return int(args.func(args))

"""The ``qcloop`` command line (platform side). ``qcloop --help`` lists the commands.

Every command reads settings from ``qcloop.toml`` / ``$QCLOOP_CONFIG`` and
``QCLOOP_*`` variables (see ``qcloop config``). Errors print one clear line
(``error: ...``) and exit 1; success exits 0. A command whose result is JSON
(``dataset import``, ``train``, ``eval``) writes its progress to stderr, so that
``qcloop eval ... > metrics.json`` keeps the JSON alone.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from qcloop.errors import QcloopError
from qcloop.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


@contextlib.contextmanager
def _progress_to_stderr() -> Iterator[None]:
    """Within: what is written to stdout (prints, library logs, the subprocesses started,
    such as the pipeline's steps) goes to stderr, so that the result printed after it
    is alone on stdout."""
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            stream.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for stream in (sys.stdout, sys.__stdout__, sys.stderr):
            if stream is not None:
                stream.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(settings.model_dump_json(indent=2))  # SecretStr fields print as '**********'
    return 0


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.contracts import export_schemas

    for path in export_schemas(Path(args.out)):
        print(path)
    return 0


def _cmd_synth(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.synthetic import generate_yolo_dataset

    out = generate_yolo_dataset(Path(args.out), shots=args.shots, seed=args.seed)
    print(f"wrote {args.shots * 4} synthetic images to {out}")
    return 0


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.dataset import import_yolo_folder

    with _progress_to_stderr():
        manifest, created = import_yolo_folder(settings, Path(args.folder), commit=args.commit)
    counts = {split: c.model_dump() for split, c in manifest.counts.items()}
    print(json.dumps({"version": manifest.version, "created": created, "counts": counts}))
    return 0


def _cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.dataset import known_versions

    for version in known_versions(settings):
        print(version)
    return 0


def _cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from components.attempts import LATEST
    from qcloop.dataset import materialize, materialize_split, newest_version

    if args.version == LATEST:
        args.version = newest_version(settings)
    if args.split:
        count = materialize_split(settings, args.version, args.split, Path(args.out))
        print(f"{args.version} {args.split}: {count} images in {args.out} (a YOLO folder)")
        return 0
    manifest = materialize(settings, args.version, Path(args.out))
    print(f"{manifest.version}: {len(manifest.images)} images in {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.runs import run_training

    with _progress_to_stderr():
        result = run_training(
            settings,
            dataset_version=args.dataset_version,
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            min_map50_95=args.min_map,
            tolerance=args.tolerance,
            seed=args.seed,
            dynamic_onnx=args.dynamic_onnx,
            model_size=args.model_size,
            patience=args.patience,
            recipe=args.recipe,
            average_last=args.average_last,
            device=args.device,
            int8=args.int8,
            approval=args.approval,
        )
    print(json.dumps(result, indent=2, default=str))
    if result.get("registered"):
        return 0
    print(f"not registered: {result.get('gate_reason')} (exit 2)", file=sys.stderr)
    return 2


def _cmd_compile(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines import labelling, training

    print(training.compile_pipeline(Path(args.out) / "training.yaml", settings))
    print(labelling.compile_pipeline(Path(args.out) / "labelling.yaml", settings))
    return 0


def _cmd_labelling_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.labelling import run_local

    result = run_local(
        pipeline_root=settings.home.resolve() / "kfp-labelling",
        settings=settings,
        train=not args.no_train,
        epochs=args.epochs,
        imgsz=args.imgsz,
        min_map50_95=args.min_map,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def _cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.submit import upload
    from pipelines.training import PIPELINE_NAME

    version = upload(args.host, settings)
    state = "uploaded" if version.uploaded else "already there, not uploaded again"
    print(
        f"pipeline {PIPELINE_NAME} version {version.name} ({version.version_id}) on "
        f"{args.host}: {state}"
    )
    return 0


def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.submit import parse_params, submit

    params = parse_params(args.param)
    if args.dataset_version:
        params["dataset_version"] = args.dataset_version
    ident = submit(
        settings,
        host=args.host,
        params=params,
        experiment=args.experiment,
        schedule=args.schedule,
        namespace=args.namespace,
        wait_s=args.wait,
    )
    kind = "recurring run" if args.schedule else "run"
    print(f"{kind} {ident} created on {args.host}")
    return 0


def _cmd_model_show(args: argparse.Namespace, settings: Settings) -> int:
    from components.registry import get_model_record

    name, ref = split_model_ref(args.ref, settings.mlflow.model_name)
    record = get_model_record(settings.mlflow.tracking_uri, name, ref)
    print(record.model_dump_json(indent=2))
    return 0


def split_model_ref(ref: str, default_name: str) -> tuple[str, str]:
    """``NAME@ALIAS``, ``NAME/VERSION``, ``@ALIAS``, ``ALIAS`` or ``VERSION`` -> (name, ref)."""
    if "@" in ref.lstrip("@"):
        name, alias = ref.split("@", 1)
        return name, "@" + alias
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, version
    return default_name, ref


def _cmd_model_pull(args: argparse.Namespace, settings: Settings) -> int:
    import shutil
    import tempfile

    from components.registry import download_onnx, get_model_record

    uri = settings.mlflow.tracking_uri
    name, ref = split_model_ref(args.ref, settings.mlflow.model_name)
    record = get_model_record(uri, name, ref)
    with tempfile.TemporaryDirectory(prefix="qcloop-pull-") as tmp:
        local = download_onnx(uri, record, Path(tmp))  # sha256 checked against the record
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local), args.output)
    print(f"{record.name} version {record.version} -> {args.output} (sha256 {record.onnx_sha256})")
    return 0


def _cmd_quantize(args: argparse.Namespace, settings: Settings) -> int:
    from components.quantize import quantize_registered

    record = quantize_registered(settings, args.ref, calibration=args.calibration)
    assert record.int8 is not None
    rows = [
        ("fp32", record.metrics, record.onnx_size),
        ("int8", record.int8.metrics, record.int8.size),
    ]
    for variant, m, size in rows:
        print(
            f"{variant}: mAP50-95 {m.map50_95:.4f}  mAP50 {m.map50:.4f}  "
            f"p50 {m.latency_p50_ms} ms  p95 {m.latency_p95_ms} ms  {size / 1e6:.1f} MB"
        )
    return 0


def _cmd_lineage(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from components.registry import lineage
    from qcloop.dataset import materialize

    name, ref = split_model_ref(args.ref, settings.mlflow.model_name)
    found = lineage(settings.mlflow.tracking_uri, name, ref)
    if args.images:  # the exact images it learnt from, out of the DVC remote
        with tempfile.TemporaryDirectory(prefix="qcloop-lineage-") as tmp:
            manifest = materialize(settings, found["dataset_version"], Path(tmp) / "data")
        found["images"] = [
            {"file": i.file, "split": i.split, "sha256": i.sha256, "boxes": i.boxes}
            for i in manifest.images
        ]
    print(json.dumps(found, indent=2))
    return 0


def _cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    from components.registry import alias_history

    for entry in alias_history(settings.mlflow.tracking_uri, settings.mlflow.model_name):
        print(json.dumps(entry))
    return 0


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from components.evaluate import evaluate_yolo_folder

    with _progress_to_stderr():
        metrics = evaluate_yolo_folder(Path(args.model), Path(args.data), imgsz=args.imgsz)
    print(metrics.to_json())
    return 0


def _cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    from components.registry import approve

    record = approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=args.version,
        alias=args.alias or settings.mlflow.production_alias,
        approved_by=args.by or getpass.getuser(),
        reason=args.reason,
    )
    print(f"approved {record.name} version {record.version} by {record.approved_by}")
    return 0


def _cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    from components.release import (
        MAX_INT8_DROP,
        build_release,
        publish_release,
        watch_and_release,
    )
    from qcloop.contracts import Thresholds

    thresholds = Thresholds(confidence=args.conf, iou=args.iou, feedback_below=args.feedback_below)
    max_int8_drop = MAX_INT8_DROP if args.max_int8_drop is None else args.max_int8_drop
    if args.action == "watch":
        watch_and_release(
            settings,
            interval_s=args.interval,
            released_by=args.by or "qcloop-release-bridge",
            thresholds=thresholds,
            fleet=args.fleet,
            variant=args.variant,
            max_int8_drop=max_int8_drop,
        )
        return 0
    message = build_release(
        settings,
        ref=args.ref,
        released_by=args.by or getpass.getuser(),
        thresholds=thresholds,
        fleet=args.fleet,
        variant=args.variant,
        max_int8_drop=max_int8_drop,
    )
    topic = publish_release(settings, message)
    print(f"released {message.model.name}/{message.model.version} on {topic} ({message.url})")
    return 0


def _cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.signing import generate_keypair

    private, public = generate_keypair(Path(args.out), args.name)
    print(f"private key (bridge, keep secret): {private}\npublic key (devices): {public}")
    return 0


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from pipelines.broker import EmbeddedBroker

    with EmbeddedBroker(args.port, prefer=args.kind) as broker:
        print(f"{broker.kind} broker on {broker.url}; Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _cmd_fleet(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.fleet import fleet_states, fleet_table

    states = fleet_states(settings.mqtt, fleet=args.fleet, wait_s=args.wait)
    if args.json:
        for state in states:
            print(json.dumps(state))
    else:
        print(fleet_table(states) if states else "no device has reported yet")
    return 0


def _cmd_raw(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.storage import list_raw_images, open_store

    for sidecar in list_raw_images(open_store(settings.store)):
        best = max((d.score for d in sidecar.predictions), default=None)
        print(f"{sidecar.key}\t{sidecar.reason}\t{sidecar.source}\tbest={best}")
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.demo import DemoOptions, run_demo

    options = DemoOptions(
        data=Path(args.data) if args.data else None,
        home=Path(args.home),
        epochs=args.epochs,
        imgsz=args.imgsz,
        frames=args.frames,
        summary=Path(args.summary),
    )
    run_demo(options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per step of the loop)."""
    parser = argparse.ArgumentParser(prog="qcloop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="settings TOML (default ./qcloop.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str, parent=sub):  # type: ignore[no-untyped-def]
        p = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    add("config", _cmd_config, "print the effective settings (secrets masked)")
    add("schemas", _cmd_schemas, "write the JSON Schemas of the contracts").add_argument(
        "--out", default="docs/schemas"
    )
    ds = add("dataset", None, "dataset versions (YOLO layout, DVC)").add_subparsers(  # type: ignore[arg-type]
        dest="dataset_command", required=True, metavar="ACTION"
    )
    p = add("synth", _cmd_synth, "generate a synthetic YOLO folder of metal tags", ds)
    p.add_argument("--out", required=True)
    p.add_argument("--shots", type=int, default=12, help="camera shots (4 crops each)")
    p.add_argument("--seed", type=int, default=0)
    p = add("import", _cmd_import, "import a YOLO folder as a new dataset version", ds)
    p.add_argument("folder")
    p.add_argument("--commit", action="store_true", help="git commit data.dvc, naming the change")
    add("list", _cmd_versions, "list dataset versions", ds)
    p = add("pull", _cmd_pull, "materialise a dataset version into a folder", ds)
    p.add_argument("version", help="e.g. v1 (qcloop dataset list), or 'latest' for the newest")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="only this split, as a plain YOLO folder (e.g. for `qcloop eval`)",
    )

    p = add("train", _cmd_train, "run the training pipeline locally (kfp.local)")
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.epilog = (
        "Prints the run's result as JSON on stdout (progress on stderr). Exit 0: registered; "
        "2: trained but not registered (the gate's reason on stderr); 1: an error."
    )
    p.add_argument(
        "--dataset-version",
        required=True,
        default=argparse.SUPPRESS,
        help="dataset version to train on (qcloop dataset list), or 'latest' for the newest",
    )
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--imgsz", type=int, default=480, help="training and export image size")
    p.add_argument("--batch", type=int, default=16, help="training batch size")
    p.add_argument("--min-map", type=float, default=0.3, help="gate: minimum mAP50-95")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="gate: at most this much mAP50-95 below the production model on the same test split",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (a recipe named again in --recipe trains with the next one)",
    )
    p.add_argument(
        "--model-size",
        default="n",
        metavar="n|s|n-p2|s-p2",  # checked, as --recipe, by pipelines.training.check_params
        help="YOLOv8n or YOLOv8s; -p2: with a stride-4 head for small objects (slower)",
    )
    p.add_argument("--patience", type=int, default=50, help="epochs without gain before stopping")
    p.add_argument(
        "--recipe",
        default="reference",
        metavar="RECIPE[,RECIPE]",
        help="training hyperparameters: reference (ultralytics defaults), scratch "
        "(tuned to thin scratches on grayscale tags) or paste (the reference with a real "
        "scratch mark pasted anew into each labelled train photo every epoch); several "
        "joined by commas train one model each and register their ensemble as one ONNX "
        "(reference,scratch: the best on unseen captures, 2x the inference cost; see "
        "docs/benchmarks.md); a recipe "
        "named again trains with the next seed (reference,scratch,reference)",
    )
    p.add_argument(
        "--average-last",
        type=int,
        default=0,
        metavar="N",
        help="average the EMA weights of the last N epochs; kept if as good on val",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help=(
            "cpu (every core the step may use: its CPU affinity, capped by a container CPU "
            "limit), 0 (first GPU), 0,1, ..."
        ),
    )
    p.add_argument("--int8", action="store_true", help="also register a static INT8 variant")
    p.add_argument(
        "--approval",
        choices=["auto", "manual"],
        default="manual",
        help="auto: move the production alias when the gate passes (audited); "
        "manual: `qcloop model approve` does",
    )
    p.add_argument(
        "--dynamic-onnx",
        action="store_true",
        help="export with free height/width: edge agents run 3:2 frames at 480x320",
    )
    pl = add("pipeline", None, "Kubeflow pipeline definitions").add_subparsers(  # type: ignore[arg-type]
        dest="pipeline_command", required=True, metavar="ACTION"
    )
    add("compile", _cmd_compile, "compile pipelines to KFP IR YAML", pl).add_argument(
        "--out", default="pipelines/compiled"
    )
    p = add(
        "labelling",
        _cmd_labelling_pipeline,
        "run the labelling pipeline locally, then training on a new dataset version",
        pl,
    )
    p.add_argument("--no-train", action="store_true", help="stop after the dataset version")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=480)
    p.add_argument("--min-map", type=float, default=0.3, help="gate: minimum mAP50-95")
    p = add("upload", _cmd_upload, "upload the training pipeline as this code's version", pl)
    p.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    p = add("submit", _cmd_submit, "upload + start the training pipeline on Kubeflow", pl)
    p.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    p.add_argument(
        "--dataset-version",
        help="dataset version to train on (default: 'latest', the newest when the run starts)",
    )
    p.add_argument("--param", action="append", default=[], help="name=value (repeatable)")
    p.add_argument("--experiment", default="qcloop")
    p.add_argument(
        "--schedule",
        help="KFP cron (6 fields, seconds first, e.g. '0 0 2 * * *') for a recurring run instead",
    )
    p.add_argument(
        "--namespace",
        default=os.environ.get("KFP_NAMESPACE") or None,
        help="Kubeflow profile of the experiment and runs (multi-user; default $KFP_NAMESPACE)",
    )
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for the run to end; exit 1 unless it succeeded",
    )
    md = add("model", None, "registered models (MLflow)").add_subparsers(  # type: ignore[arg-type]
        dest="model_command", required=True, metavar="ACTION"
    )
    add("show", _cmd_model_show, "show a model version or alias", md).add_argument(
        "ref", help="NAME@ALIAS, NAME/VERSION, @ALIAS or VERSION"
    )
    p = add("approve", _cmd_approve, "approve a version: move the alias, tag who/when", md)
    p.add_argument("version")
    p.add_argument("--by", help="who approves (default: current user)")
    p.add_argument("--alias", help="alias to set (default: mlflow.production_alias)")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p = add("pull", _cmd_model_pull, "download a registered ONNX (sha256 checked)", md)
    p.add_argument("ref", help="NAME@ALIAS, NAME/VERSION, @ALIAS or VERSION")
    p.add_argument("--output", required=True)
    p = add("quantize", _cmd_quantize, "add a static INT8 variant (stem, head float), scored", md)
    p.add_argument("ref", help="version or alias")
    p.add_argument("--calibration", type=int, default=64, help="train images to calibrate on")
    p = add("lineage", _cmd_lineage, "dataset/code version, pipeline run, params, env", md)
    p.add_argument("ref", help="NAME@ALIAS, NAME/VERSION, @ALIAS or VERSION")
    p.add_argument("--images", action="store_true", help="also list the exact images (DVC)")
    add("history", _cmd_history, "every alias move: who, when, why, from which version", md)
    p = add("eval", _cmd_eval, "metrics (JSON) of any ONNX model on a YOLO folder")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="YOLO folder (images/, labels/, classes.txt)")
    p.add_argument("--imgsz", type=int, help="default: the size the model was exported at")
    p = add("release", _cmd_release, "publish the approved model to the fleet over MQTT")
    p.add_argument(
        "action",
        nargs="?",
        choices=["once", "watch"],
        default="once",
        help="once (default), or watch: the bridge service, publishing whenever the alias moves",
    )
    p.add_argument("--interval", type=float, default=30.0, help="watch: seconds between polls")
    p.add_argument("--variant", choices=["fp32", "int8"], default="fp32", help="which ONNX to ship")
    p.add_argument(
        "--max-int8-drop",
        type=float,
        help="int8: refuse it if its test mAP50-95 is more than this below the FP32's "
        "(default: components.release.MAX_INT8_DROP, 0.02)",
    )
    p.add_argument("--ref", help="version or alias (default: production alias)")
    p.add_argument("--fleet", help="fleet (default: mqtt.fleet)")
    p.add_argument("--by", help="who releases (default: current user)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold on devices")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU on devices")
    p.add_argument(
        "--feedback-below", type=float, default=0.5, help="send back if best score below"
    )
    keys = add("keys", None, "release signing keys (Ed25519)").add_subparsers(  # type: ignore[arg-type]
        dest="keys_command", required=True, metavar="ACTION"
    )
    p = add("generate", _cmd_keys, "write a new key pair: NAME.key (bridge) + NAME.pub", keys)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="release")
    p = add("broker", _cmd_broker, "run the embedded MQTT broker in the foreground")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto")
    p = add("fleet", _cmd_fleet, "list the devices: which model each runs, since when, health")
    p.add_argument("--fleet", help="only this fleet")
    p.add_argument("--json", action="store_true", help="one JSON line per device")
    p.add_argument("--wait", type=float, default=2.0, help="seconds to collect retained states")
    add("raw", _cmd_raw, "list images in the raw store (with reason and best score)")
    from qcloop_labelling.cli import register as register_labelling

    register_labelling(sub)
    p = add("demo", _cmd_demo, "run the whole loop on one machine (the quickstart)")
    p.add_argument("--data", help="YOLO folder to use instead of synthetic images")
    p.add_argument("--home", default=".qcloop/demo", help="state folder (reset each run)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--frames", type=int, default=24, help="frames the edge agent inspects")
    p.add_argument("--summary", default="demo-summary.json")
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_to_stderr() -> None:
    """The project's log records (INFO and up) on stderr, one line each; libraries' as is."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    for name in ("qcloop", "components", "pipelines", "qcloop_labelling"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qcloop``; returns the exit code."""
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        settings = load_settings(args.config)
        return int(args.handler(args, settings))
    except QcloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

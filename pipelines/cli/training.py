"""``qcloop train``, ``eval`` and ``pipeline ...``: training runs, here or on Kubeflow.

The options of ``train`` and ``pipeline labelling`` take their defaults and help from
``qcloop.params.TrainingParams``, as the pipelines' run parameters do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipelines.cli.common import SubParsers, add, group
from qcloop.params import DEFAULTS, TrainingParams, help_of
from qcloop.settings import Settings

log = logging.getLogger(__name__)

# ``qcloop train`` option -> training parameter, where the option's name is shorter
_OPTION_NAMES = {"min_map50_95": "min_map"}
# training parameters a local run sets itself (the GPUs of a pod: none here)
_NOT_OPTIONS = ("gpu_limit",)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.runs import run_training

    values: dict[str, Any] = {
        name: getattr(args, _OPTION_NAMES.get(name, name))
        for name in TrainingParams.model_fields
        if name not in _NOT_OPTIONS
    }
    result = run_training(settings, dataset_version=args.dataset_version, **values)
    print(json.dumps(result, indent=2, default=str))
    if result.get("registered"):
        return 0
    log.error("not registered: %s (exit 2)", result.get("gate_reason"))
    return 2


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from components.evaluate import evaluate_yolo_folder

    metrics = evaluate_yolo_folder(Path(args.model), Path(args.data), imgsz=args.imgsz)
    print(metrics.to_json())
    return 0


def _compile(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines import labelling, training

    print(training.compile_pipeline(Path(args.out) / "training.yaml", settings))
    print(labelling.compile_pipeline(Path(args.out) / "labelling.yaml", settings))
    return 0


def _labelling(args: argparse.Namespace, settings: Settings) -> int:
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


def _upload(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.submit import upload
    from pipelines.training import PIPELINE_NAME

    version = upload(args.host, settings)
    state = "uploaded" if version.uploaded else "already there, not uploaded again"
    print(
        f"pipeline {PIPELINE_NAME} version {version.name} ({version.version_id}) on "
        f"{args.host}: {state}"
    )
    return 0


def _submit(args: argparse.Namespace, settings: Settings) -> int:
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


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-map", type=float, default=DEFAULTS.min_map50_95, help=help_of("min_map50_95")
    )


def _add_train(sub: SubParsers) -> None:
    p = add(sub, "train", _train, "run the training pipeline locally (kfp.local)")
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
    for name in ("epochs", "imgsz", "batch"):
        p.add_argument(f"--{name}", type=int, default=getattr(DEFAULTS, name), help=help_of(name))
    _gate_options(p)
    p.add_argument("--tolerance", type=float, default=DEFAULTS.tolerance, help=help_of("tolerance"))
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help=help_of("seed"))
    p.add_argument(
        "--model-size", choices=["n", "s"], default=DEFAULTS.model_size, help=help_of("model_size")
    )
    p.add_argument("--patience", type=int, default=DEFAULTS.patience, help=help_of("patience"))
    p.add_argument(
        "--recipe", default=DEFAULTS.recipe, metavar="RECIPE[,RECIPE]", help=help_of("recipe")
    )
    p.add_argument("--device", default=DEFAULTS.device, help=help_of("device"))
    p.add_argument("--int8", action="store_true", help=help_of("int8"))
    p.add_argument(
        "--approval",
        choices=["auto", "manual"],
        default=DEFAULTS.approval,
        help=help_of("approval"),
    )
    p.add_argument("--dynamic-onnx", action="store_true", help=help_of("dynamic_onnx"))


def _add_pipeline(sub: SubParsers) -> None:
    pl = group(sub, "pipeline", "Kubeflow pipeline definitions")
    add(pl, "compile", _compile, "compile pipelines to KFP IR YAML").add_argument(
        "--out", default="pipelines/compiled"
    )
    p = add(
        pl,
        "labelling",
        _labelling,
        "run the labelling pipeline locally, then training on a new dataset version",
    )
    p.add_argument("--no-train", action="store_true", help="stop after the dataset version")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help=help_of("epochs"))
    p.add_argument("--imgsz", type=int, default=DEFAULTS.imgsz, help=help_of("imgsz"))
    _gate_options(p)
    p = add(pl, "upload", _upload, "upload the training pipeline as this code's version")
    p.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
    p = add(pl, "submit", _submit, "upload + start the training pipeline on Kubeflow")
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


def register(sub: SubParsers) -> None:
    """Add the training, evaluation and pipeline commands to the ``qcloop`` parser."""
    _add_train(sub)
    p = add(sub, "eval", _eval, "metrics (JSON) of any ONNX model on a YOLO folder")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="YOLO folder (images/, labels/, classes.txt)")
    p.add_argument("--imgsz", type=int, help="default: the size the model was exported at")
    _add_pipeline(sub)

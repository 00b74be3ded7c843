"""``qcloop model ...``: registered models in MLflow (show, approve, pull, INT8, lineage)."""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

from pipelines.cli.common import SubParsers, add, group, split_model_ref
from qcloop.settings import Settings

_REF_HELP = "NAME@ALIAS, NAME/VERSION, @ALIAS or VERSION"


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from components.registry import get_model_record

    name, ref = split_model_ref(args.ref, settings.mlflow.model_name)
    record = get_model_record(settings.mlflow.tracking_uri, name, ref)
    print(record.model_dump_json(indent=2))
    return 0


def _pull(args: argparse.Namespace, settings: Settings) -> int:
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


def _quantize(args: argparse.Namespace, settings: Settings) -> int:
    from components.quantize import quantize_registered

    record = quantize_registered(settings, args.ref, calibration=args.calibration)
    assert record.int8 is not None  # quantize_registered always adds it
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


def _lineage(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from components.audit import lineage
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


def _history(args: argparse.Namespace, settings: Settings) -> int:
    from components.audit import alias_history

    for entry in alias_history(settings.mlflow.tracking_uri, settings.mlflow.model_name):
        print(json.dumps(entry))
    return 0


def _approve(args: argparse.Namespace, settings: Settings) -> int:
    from components.audit import approve
    from qcloop.signing import key_id, load_private_key

    key = load_private_key(Path(args.key)) if args.key else None
    record = approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=args.version,
        alias=args.alias or settings.mlflow.production_alias,
        approved_by=args.by or getpass.getuser(),
        reason=args.reason,
        signing_key=key,
    )
    signed = f", signed with key {key_id(key.public_key())}" if key else " (unsigned)"
    print(f"approved {record.name} version {record.version} by {record.approved_by}{signed}")
    return 0


def register(sub: SubParsers) -> None:
    """Add ``qcloop model ACTION`` to the ``qcloop`` parser."""
    md = group(sub, "model", "registered models (MLflow)")
    add(md, "show", _show, "show a model version or alias").add_argument("ref", help=_REF_HELP)
    p = add(md, "approve", _approve, "approve a version: move the alias, tag who/when")
    p.add_argument("version")
    p.add_argument("--by", help="who approves (default: current user)")
    p.add_argument("--alias", help="alias to set (default: mlflow.production_alias)")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.add_argument(
        "--key",
        help="your approver private key (`qcloop keys generate --name NAME`): signs the "
        "approval over the version's exact ONNX sha256; a bridge with release.approvers "
        "releases only versions approved this way",
    )
    p = add(md, "pull", _pull, "download a registered ONNX (sha256 checked)")
    p.add_argument("ref", help=_REF_HELP)
    p.add_argument("--output", required=True)
    p = add(md, "quantize", _quantize, "add a static INT8 variant (stem, head float), scored")
    p.add_argument("ref", help="version or alias")
    p.add_argument("--calibration", type=int, default=64, help="train images to calibrate on")
    p = add(md, "lineage", _lineage, "dataset/code version, pipeline run, params, env")
    p.add_argument("ref", help=_REF_HELP)
    p.add_argument("--images", action="store_true", help="also list the exact images (DVC)")
    add(md, "history", _history, "every alias move: who, when, why, from which version")

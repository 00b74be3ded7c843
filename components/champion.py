"""Champion / challenger: score the production model on the challenger's test split.

The gate then compares like with like: both models on the same images of the
same dataset version. No production model yet -> no champion (the first model
only has to pass the threshold).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from components.bootstrap import map50_95, paired_interval, stats_from_json
from components.data import load_manifest
from components.evaluate import evaluate_onnx
from components.gate import Paired
from components.registry import download_onnx, get_model_record
from qcloop.contracts import EvalMetrics, ModelRecord
from qcloop.errors import NotRegisteredError, PipelineError

log = logging.getLogger(__name__)


def production_record(tracking_uri: str, model_name: str, alias: str) -> ModelRecord | None:
    """The record behind ``alias``, or None if no version carries it (or the model is new)."""
    try:
        return get_model_record(tracking_uri, model_name, f"@{alias.lstrip('@')}")
    except NotRegisteredError:
        return None


def evaluate_champion(
    tracking_uri: str, model_name: str, alias: str, dataset_dir: Path
) -> tuple[ModelRecord, EvalMetrics] | None:
    """Metrics of the production model on ``dataset_dir``'s test split, or None if none.

    ``PipelineError`` if its class list differs from the dataset's: such a
    challenger cannot be compared and must not replace it silently.
    """
    record = comparable_production(tracking_uri, model_name, alias, dataset_dir)
    if record is None:
        return None
    with tempfile.TemporaryDirectory(prefix="qcloop-champion-") as tmp:
        onnx = download_onnx(tracking_uri, record, Path(tmp))
        log.info("%s v%s on the same test split", record.name, record.version)
        metrics = evaluate_onnx(onnx, Path(dataset_dir), imgsz=record.input_size)
    return record, metrics


def compare_with_production(
    tracking_uri: str, model_name: str, alias: str, dataset_dir: Path, challenger_stats: Path
) -> tuple[EvalMetrics, Paired] | None:
    """The production model's metrics on ``dataset_dir``'s test split and the paired
    comparison with the challenger (its per-image statistics: ``challenger_stats``, from
    ``evaluate_onnx(image_stats=...)`` on the same split); None without a production model.
    """
    record = comparable_production(tracking_uri, model_name, alias, dataset_dir)
    if record is None:
        return None
    with tempfile.TemporaryDirectory(prefix="qcloop-champion-") as tmp:
        onnx = download_onnx(tracking_uri, record, Path(tmp))
        log.info("%s v%s on the same test split, paired", record.name, record.version)
        theirs_file = Path(tmp) / "production-stats.json"
        metrics = evaluate_onnx(
            onnx, Path(dataset_dir), imgsz=record.input_size, image_stats=theirs_file
        )
        theirs = stats_from_json(theirs_file.read_text())
    ours = stats_from_json(Path(challenger_stats).read_text())
    if set(ours) != set(theirs):
        raise PipelineError(
            f"the challenger was scored on {len(ours)} images, production on {len(theirs)} "
            "other ones: evaluate both on the same dataset version's test split"
        )
    files = sorted(ours)
    groups = [ours[f][0] for f in files]
    mine, production = [ours[f][1] for f in files], [theirs[f][1] for f in files]
    interval = paired_interval(mine, production, groups)
    paired = Paired(
        production_version=str(record.version),
        difference=map50_95(mine) - map50_95(production),
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        captures=len(set(groups)),
        new_data=record.dataset_version != load_manifest(Path(dataset_dir)).version,
    )
    return metrics, paired


def comparison_json(found: tuple[EvalMetrics, Paired] | None) -> str:
    """``compare_with_production``'s answer as the gate step reads it
    (``components.gate.decide``): ``{"metrics": ..., "paired": ...}``, or "" without one."""
    if found is None:
        return ""
    production, paired = found
    return json.dumps(
        {"metrics": production.model_dump(mode="json"), "paired": paired.model_dump(mode="json")}
    )


def comparable_production(
    tracking_uri: str, model_name: str, alias: str, dataset_dir: Path
) -> ModelRecord | None:
    """The production record if there is one, or None; ``PipelineError`` if its class list
    differs from the dataset's."""
    record = production_record(tracking_uri, model_name, alias)
    if record is None:
        log.info("no %s@%s yet: nothing to beat", model_name, alias.lstrip("@"))
        return None
    classes = load_manifest(Path(dataset_dir)).class_names
    if record.class_names != classes:
        raise PipelineError(
            f"dataset classes {classes} differ from production model {record.name} "
            f"v{record.version}'s {record.class_names}; keep the class list, or retire the "
            "production model on purpose before training a different one"
        )
    return record

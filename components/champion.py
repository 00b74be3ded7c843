"""Champion / challenger: score the production model on the challenger's test split.

The gate then compares like with like: both models on the same images of the
same dataset version. No production model yet -> no champion (the first model
only has to pass the threshold).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.evaluate import evaluate_onnx
from components.registry import download_onnx, get_model_record
from components.train import load_manifest
from qcloop.contracts import EvalMetrics, ModelRecord
from qcloop.errors import NotRegisteredError, PipelineError


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
    record = production_record(tracking_uri, model_name, alias)
    if record is None:
        print(f"[champion] no {model_name}@{alias.lstrip('@')} yet: nothing to beat")
        return None
    classes = load_manifest(Path(dataset_dir)).class_names
    if record.class_names != classes:
        raise PipelineError(
            f"dataset classes {classes} differ from production model {record.name} "
            f"v{record.version}'s {record.class_names}; keep the class list, or retire the "
            "production model on purpose before training a different one"
        )
    with tempfile.TemporaryDirectory(prefix="qcloop-champion-") as tmp:
        onnx = download_onnx(tracking_uri, record, Path(tmp))
        print(f"[champion] {record.name} v{record.version} on the same test split")
        metrics = evaluate_onnx(onnx, Path(dataset_dir), imgsz=record.input_size)
    return record, metrics

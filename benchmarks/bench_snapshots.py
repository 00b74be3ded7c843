"""What a finished run gives without more training: its checkpoints pooled, its boxes rescaled.

    .venv/bin/python -m benchmarks.bench_snapshots --runs DIR --variant reference
        [--data DIR] [--folds K [--fold-ids 0,1]] [--seeds 0] [--imgsz 480]
        [--pools best,last,best+last] [--box-scale]

``--runs`` is a ``benchmarks.bench_recipes --out`` folder; each (seed, fold) of
``--variant`` is the run ``VARIANT-seedS[-foldK]`` there, with its weights under
``run/weights``. ``--data``, ``--folds`` and ``--fold-ids`` must be those the runs
were trained with: each run is scored on the test split it never saw.

- ``--pools``: each pool is weights of the run (``best``, ``last``, or ``epochK``,
  which bench_recipes keeps with ``--save-period``) joined by ``+``; a pool of two or
  more is scored as their ensemble, pooled by NMS into one ONNX graph as
  ``qcloop train --recipe a,b`` pools its members (components/ensemble.py): the
  "ensembling of checkpoints" of one run, at no extra training. The first pool is
  the baseline of the table.
- ``--box-scale``: are the run's boxes (``best``) systematically wider or taller
  than the labels? The width and height of every box it predicts are multiplied by
  the factors (0.88-1.12, steps of 0.02) that give the best mAP50-95 on the **val**
  split, and the test split is scored with them (row ``best scaled on val``); the
  factors that would be best on the test split itself are given too (row ``best
  scaled on test``, an upper bound no model could be tuned to). The mAP is computed
  here from the boxes ultralytics predicts (conf 0.001, NMS IoU 0.7, as its
  validator) and scored by its validator's own matching and AP functions; at factor 1
  it is the validator's figure.

The table gives each row's test mAP50-95 and its paired difference to the first
pool over the same (seed, fold) with its standard error; results go to
``<runs>/snapshots-<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common, training

ROOT = Path(__file__).resolve().parents[1]

SCALES = [round(0.88 + 0.02 * k, 2) for k in range(13)]  # 0.88 ... 1.12


def labelled_predictions(onnx: Path, dataset: Path, split: str, imgsz: int) -> list[Any]:
    """Per image of ``split``: (predicted xyxy, confidences, labelled xyxy), in pixels.

    ``DatasetError`` if the split has no images."""
    import numpy as np
    from ultralytics import YOLO
    from ultralytics.utils.ops import xywhn2xyxy

    from qcloop.contracts import DatasetManifest
    from qcloop.errors import DatasetError
    from qcloop.yolo import parse_label_file
    from qcloop.yolo_env import configure_offline

    configure_offline()
    manifest = DatasetManifest.model_validate_json((dataset / "manifest.json").read_text())
    images = [i for i in manifest.images if i.split == split]
    if not images:
        raise DatasetError(f"{dataset}: the {split} split is empty; nothing to score on")
    model = YOLO(str(onnx), task="detect")
    rows = []
    for image in images:
        label_file = dataset / image.label_file
        boxes, problems = (
            parse_label_file(label_file, len(manifest.class_names))
            if label_file.is_file()
            else ((), [])
        )
        if problems:
            raise DatasetError("; ".join(problems))
        labels = np.array([(b.cx, b.cy, b.w, b.h) for b in boxes], dtype=float).reshape(-1, 4)
        found = model.predict(
            str(dataset / image.file), imgsz=imgsz, conf=0.001, iou=0.7, max_det=300, verbose=False
        )[0].boxes
        truth = xywhn2xyxy(labels, w=image.width, h=image.height)
        rows.append((found.xyxy.numpy().copy(), found.conf.numpy().copy(), truth))
    return rows


def scaled(boxes: Any, scale_w: float, scale_h: float) -> Any:
    """``boxes`` (xyxy) with their widths and heights times the factors, same centres."""
    from ultralytics.utils.ops import xywh2xyxy, xyxy2xywh

    return xywh2xyxy(xyxy2xywh(boxes) * [1.0, 1.0, scale_w, scale_h])


def matched(predicted: Any, truth: Any) -> Any:
    """Which of ``predicted`` (xyxy, in the order given) match a label of ``truth`` one
    to one at each IoU threshold 0.50 ... 0.95: ultralytics' validator's own matching,
    a bool array (predictions x 10)."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import box_iou

    if not len(predicted) or not len(truth):
        return np.zeros((len(predicted), 10), dtype=bool)
    return BaseValidator.match_predictions(
        SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10)),  # type: ignore[arg-type]
        torch.zeros(len(predicted)),
        torch.zeros(len(truth)),
        box_iou(torch.from_numpy(truth).float(), torch.from_numpy(predicted).float()),
    ).numpy()


def validator_ap(
    rows: list[Any], scale_w: float = 1.0, scale_h: float = 1.0
) -> tuple[list[float], float, float]:
    """One class's AP at each IoU threshold 0.50 ... 0.95, precision and recall of
    ``labelled_predictions`` with the boxes scaled, matched (``matched``) and averaged by
    ultralytics' validator's own functions; all zeros when there is no label."""
    import numpy as np
    from ultralytics.utils.metrics import ap_per_class

    hits, scores, labels = [], [], 0
    for predicted, conf, truth in rows:
        order = np.argsort(-conf, kind="stable")  # the validator matches in this order
        labels += len(truth)
        hits.append(matched(scaled(predicted[order], scale_w, scale_h), truth))
        scores.append(conf[order])
    conf = np.concatenate(scores)
    _, _, precision, recall, _, ap, *_ = ap_per_class(
        np.concatenate(hits), conf, np.zeros(len(conf)), np.zeros(labels)
    )
    if not len(ap):  # no labels at all
        return [0.0] * 10, 0.0, 0.0
    return [float(a) for a in ap[0]], float(precision.mean()), float(recall.mean())


def box_metrics(rows: list[Any], scale_w: float = 1.0, scale_h: float = 1.0) -> dict[str, float]:
    """mAP50, mAP50-95, precision and recall of one class's ``labelled_predictions`` with
    the boxes scaled (``validator_ap``)."""
    ap, precision, recall = validator_ap(rows, scale_w, scale_h)
    return {
        "map50": ap[0],
        "map50_95": sum(ap) / len(ap),
        "precision": precision,
        "recall": recall,
    }


def best_scale(rows: list[Any]) -> tuple[float, float]:
    """The (width, height) factors of ``SCALES`` with the best mAP50-95 on ``rows``
    (the nearer to 1 on a tie)."""
    return max(
        ((w, h) for w in SCALES for h in SCALES),
        key=lambda s: (box_metrics(rows, *s)["map50_95"], -abs(s[0] - 1) - abs(s[1] - 1)),
    )


def pool_onnx(weights: Path, names: list[str], work: Path, imgsz: int) -> Path:
    """One ONNX of the run's weights ``names`` (exported once each; pooled if several)."""
    from components.ensemble import merge_onnx
    from components.export import export_onnx

    parts = []
    for name in names:
        source = weights / f"{name}.pt"
        if not source.is_file():
            raise FileNotFoundError(
                f"{source}: no such weights (epochK.pt: train with bench_recipes --save-period)"
            )
        part = work / f"{name}.onnx"
        if not part.is_file():
            export_onnx(source, part, imgsz=imgsz)
        parts.append(part)
    return parts[0] if len(parts) == 1 else merge_onnx(parts, work / f"{'+'.join(names)}.onnx")


def score_run(
    folder: Path, dataset: Path, work: Path, pools: list[str], box_scale: bool, imgsz: int
) -> list[dict[str, Any]]:
    """The rows of one run: each pool's test figures, then the rescaled boxes'."""
    from components.evaluate import evaluate_onnx

    weights = folder / "run" / "weights"
    rows: list[dict[str, Any]] = []
    for pool in pools:
        try:
            onnx = pool_onnx(weights, pool.split("+"), work, imgsz)
            metrics = evaluate_onnx(onnx, dataset, imgsz=imgsz).model_dump()
        except Exception as exc:
            rows.append({"variant": pool, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"variant": pool, **metrics})
    if box_scale:
        try:
            onnx = pool_onnx(weights, ["best"], work, imgsz)
            val = labelled_predictions(onnx, dataset, "val", imgsz)
            test = labelled_predictions(onnx, dataset, "test", imgsz)
            fitted, oracle = best_scale(val), best_scale(test)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return rows + [{"variant": v, "error": error} for v in SCALED_ROWS]
        for variant, factors in zip(SCALED_ROWS, (fitted, oracle), strict=True):
            rows.append({"variant": variant, "scale": factors, **box_metrics(test, *factors)})
    return rows


SCALED_ROWS = ("best scaled on val", "best scaled on test")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Score a finished run's checkpoints pooled and its boxes rescaled."
    )
    common.add_run_options(parser)
    parser.add_argument("--variant", required=True, help="the runs' variant, e.g. reference")
    parser.add_argument(
        "--pools",
        default="best,last,best+last",
        help="comma-separated; each: the run's weights (best, last, epochK) joined by +",
    )
    parser.add_argument("--box-scale", action="store_true", help="also rescale best's boxes")
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    try:
        training.parse_variant(args.variant)
        if not pools:
            raise ValueError("--pools: name one or more, e.g. best,last,best+last")
        folds = common.fold_selection(args.folds, args.fold_ids) or [-1]
        seeds = [int(s) for s in args.seeds.split(",")]
    except Exception as exc:
        print(f"bench_snapshots: {exc}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    results_path = args.runs / f"snapshots-{args.variant}.json"
    with tempfile.TemporaryDirectory(prefix="qcloop-snapshots-") as tmp:
        work = Path(tmp)
        splits = common.run_splits(args.data, args.folds, folds, seeds, work)
        for data, fold, seed, labels in splits:
            folder = common.run_folder(args.runs, args.variant, seed, fold)
            where = work / folder.name
            where.mkdir()
            for row in score_run(folder, data, where, pools, args.box_scale, args.imgsz):
                results.append({**row, **labels, "train_s": 0.0})
                print(f"bench_snapshots: {json.dumps(results[-1])}", flush=True)
            results_path.write_text(json.dumps(results, indent=2))
    rows = pools + (list(SCALED_ROWS) if args.box_scale else [])
    print(f"\n{args.variant}: test mAP50-95 of its checkpoints (train s: none added)")
    print("\n".join(common.summarise(results, rows)))
    print(f"results: {results_path}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

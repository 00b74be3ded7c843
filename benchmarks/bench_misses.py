"""Where a finished run's mAP50-95 goes: AP by IoU threshold, and what its misses are.

    .venv/bin/python -m benchmarks.bench_misses --runs DIR --variant reference
        [--data DIR] [--folds K [--fold-ids 0,1]] [--seeds 0] [--imgsz 480]
        [--splits val,test] [--conf 0.25]

``--runs``, ``--variant``, ``--data``, ``--folds``, ``--fold-ids`` and ``--seeds`` name
finished ``benchmarks.bench_recipes`` runs as in ``benchmarks.bench_snapshots``; each
run's model (its ``model.onnx``, else its ``best.pt`` exported) is scored on each of
``--splits`` with ultralytics' validator's matching and AP functions (conf 0.001, NMS
IoU 0.7: the validator's figure). For each split it gives:

- the AP at each IoU threshold 0.50, 0.55, ... 0.95 (mAP50-95 is their mean): how
  much is lost by finding nothing, and how much by boxes placed loosely;
- every label the run misses (no box of confidence >= ``--conf`` at IoU >= 0.5), by
  kind: ``pieces`` (the label is one box where the run found two or more boxes inside
  it: one scratch labelled whole, found in pieces), ``part of a neighbour`` (the label
  lies mostly inside a box that matched another label: labelled apart, found as part
  of the scratch beside it), ``loose`` (a box overlaps it, IoU 0.1-0.5) and
  ``not found``;
- every box of confidence >= ``--conf`` that matches no label, by kind: ``inside a
  label`` (mostly inside a label it does not match: a piece of a scratch labelled
  whole), ``loose on a label`` (overlaps one, IoU 0.1-0.5: a second, looser box for
  a scratch, or a loose one for a scratch it misses) and ``background``;
- the mAP50-95 with the labels whose granularity is in dispute (``pieces`` and ``part
  of a neighbour``) ignored, and the boxes inside a ``pieces`` label with them, as
  COCO ignores its crowd regions: how much of the gap lies in how the scratches were
  cut into boxes rather than in finding them. It is chosen by the run's own errors,
  so it is an upper bound for labels drawn consistently, not a score.

Results go to ``<runs>/misses-<variant>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import bench_snapshots, common, training

ROOT = Path(__file__).resolve().parents[1]

LABEL_KINDS = ("found", "pieces", "part of a neighbour", "loose", "not found")
BOX_KINDS = ("matched", "inside a label", "loose on a label", "background")
DISPUTED = ("pieces", "part of a neighbour")


def inside(a: Any, b: Any) -> float:
    """The fraction of box ``a``'s area (xyxy) that lies inside box ``b``."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    area = (a[2] - a[0]) * (a[3] - a[1])
    return max(0.0, width) * max(0.0, height) / area if area > 0 else 0.0


def iou_matrix(truth: Any, boxes: Any) -> Any:
    """IoU of every label (rows) with every box (columns), as numpy."""
    import numpy as np
    import torch
    from ultralytics.utils.metrics import box_iou

    if not len(truth) or not len(boxes):
        return np.zeros((len(truth), len(boxes)))
    return box_iou(torch.from_numpy(truth).float(), torch.from_numpy(boxes).float()).numpy()


def classify(
    boxes: Any, conf: Any, truth: Any, conf_min: float = 0.25
) -> tuple[list[str], list[str]]:
    """The kind of each label (``LABEL_KINDS``) and of each box (``BOX_KINDS``; boxes
    under ``conf_min`` are ``""``) of one image; boxes and labels xyxy in pixels."""
    shown = [j for j in range(len(boxes)) if conf[j] >= conf_min]
    iou = iou_matrix(truth, boxes)
    matched = {j for j in shown if len(truth) and iou[:, j].max() >= 0.5}
    labels = []
    for i, label in enumerate(truth):
        best = max((iou[i, j] for j in shown), default=0.0)
        pieces = [j for j in shown if inside(boxes[j], label) > 0.7]
        neighbour = [j for j in matched if iou[i, j] < 0.5 and inside(label, boxes[j]) > 0.5]
        if best >= 0.5:
            labels.append("found")
        elif len(pieces) > 1:
            labels.append("pieces")
        elif neighbour:
            labels.append("part of a neighbour")
        elif best > 0.1:
            labels.append("loose")
        else:
            labels.append("not found")
    kinds = []
    for j in range(len(boxes)):
        if j not in shown:
            kinds.append("")
        elif j in matched:
            kinds.append("matched")
        elif any(inside(boxes[j], label) > 0.7 for label in truth):
            kinds.append("inside a label")
        elif len(truth) and iou[:, j].max() > 0.1:
            kinds.append("loose on a label")
        else:
            kinds.append("background")
    return labels, kinds


def without_disputed(rows: list[Any], conf_min: float = 0.25) -> list[Any]:
    """``rows`` (``bench_snapshots.labelled_predictions``) with the disputed labels
    removed, and every box (any confidence) mostly inside a ``pieces`` label with them."""
    out = []
    for boxes, conf, truth in rows:
        labels, _ = classify(boxes, conf, truth, conf_min)
        keep = [i for i, kind in enumerate(labels) if kind not in DISPUTED]
        whole = [truth[i] for i, kind in enumerate(labels) if kind == "pieces"]
        drop = [j for j in range(len(boxes)) if any(inside(boxes[j], w) > 0.7 for w in whole)]
        kept = [j for j in range(len(boxes)) if j not in drop]
        out.append((boxes[kept], conf[kept], truth[keep].reshape(-1, 4)))
    return out


def misses(rows: list[Any], conf_min: float = 0.25) -> dict[str, Any]:
    """The figures of one run on one split (see the module's docstring)."""
    labels: dict[str, int] = dict.fromkeys(LABEL_KINDS, 0)
    boxes: dict[str, int] = dict.fromkeys(BOX_KINDS, 0)
    for found, conf, truth in rows:
        label_kinds, box_kinds = classify(found, conf, truth, conf_min)
        for kind in label_kinds:
            labels[kind] += 1
        for kind in filter(None, box_kinds):
            boxes[kind] += 1
    ap = bench_snapshots.validator_ap(rows)[0]
    return {
        "ap_by_iou": [round(a, 4) for a in ap],
        "map50_95": sum(ap) / len(ap),
        "labels": labels,
        "boxes": boxes,
        "map50_95_disputed_ignored": bench_snapshots.box_metrics(without_disputed(rows, conf_min))[
            "map50_95"
        ],
    }


def run_model(folder: Path, work: Path, imgsz: int) -> Path:
    """The run's chosen model (``model.onnx``), else its ``best.pt`` exported under ``work``."""
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    return bench_snapshots.pool_onnx(folder / "run" / "weights", ["best"], work, imgsz)


def table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per (run, split)."""
    lines = [
        "| run | split | AP at IoU .50 / .60 / .70 / .80 / .90 | mAP50-95 | labels: found, "
        + ", ".join(LABEL_KINDS[1:])
        + " | unmatched boxes: "
        + ", ".join(BOX_KINDS[1:])
        + " | mAP50-95, disputed ignored |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['split']} | FAILED: {r['error']} | | | | |")
            continue
        ap = " / ".join(f"{a:.3f}" for a in r["ap_by_iou"][::2])
        found = ", ".join(str(r["labels"][k]) for k in LABEL_KINDS)
        unmatched = ", ".join(str(r["boxes"][k]) for k in BOX_KINDS[1:])
        lines.append(
            f"| {r['run']} | {r['split']} | {ap} | {r['map50_95']:.4f} | {found} | {unmatched} "
            f"| {r['map50_95_disputed_ignored']:.4f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Where a finished run's mAP50-95 goes: AP by IoU, and its misses by kind."
    )
    common.add_run_options(parser)
    parser.add_argument("--variant", required=True, help="the runs' variant, e.g. reference")
    parser.add_argument("--splits", default="val,test", help="comma-separated: val, test, train")
    parser.add_argument(
        "--conf", type=float, default=0.25, help="the confidence a box must have to count"
    )
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        training.parse_variant(args.variant)
        if not splits or not set(splits) <= {"train", "val", "test"}:
            raise ValueError(f"--splits {args.splits}: name train, val and/or test")
        if not 0.0 < args.conf < 1.0:
            raise ValueError(f"--conf {args.conf}: use a confidence between 0 and 1")
        folds = common.fold_selection(args.folds, args.fold_ids) or [-1]
        seeds = [int(s) for s in args.seeds.split(",")]
    except Exception as exc:
        print(f"bench_misses: {exc}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    results_path = args.runs / f"misses-{args.variant}.json"
    with tempfile.TemporaryDirectory(prefix="qcloop-misses-") as tmp:
        work = Path(tmp)
        for data, fold, seed, labels in common.run_splits(
            args.data, args.folds, folds, seeds, work
        ):
            folder = common.run_folder(args.runs, args.variant, seed, fold)
            (work / folder.name).mkdir()
            for split in splits:
                row: dict[str, Any] = {"run": folder.name, "split": split, **labels}
                try:
                    onnx = run_model(folder, work / folder.name, args.imgsz)
                    rows = bench_snapshots.labelled_predictions(onnx, data, split, args.imgsz)
                    row.update(misses(rows, args.conf))
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                results.append(row)
                print(f"bench_misses: {json.dumps(row)}", flush=True)
                results_path.write_text(json.dumps(results, indent=2))
    print(f"\n{args.variant}: where the mAP50-95 goes (boxes of confidence >= {args.conf})")
    print("\n".join(table(results)))
    print(f"results: {results_path}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""How to fuse an ensemble's members: each way scored on the same test splits, nothing trained.

    .venv/bin/python -m benchmarks.bench_fusion --runs DIR --ensemble reference,scratch+avg10
        [--data DIR] [--folds K [--fold-ids 0,1]] [--seeds 0] [--imgsz 480]
        [--methods nms,flip,wbf,flip+wbf] [--wbf-iou 0.55]

``--runs`` is a ``benchmarks.bench_recipes --out`` folder with the members' finished
runs (``VARIANT-seedS[-foldK]/result.json`` and weights or ``model.onnx``); a variant
named again is its run with the next seed, as in the pipeline. ``--data``, ``--folds``
and ``--fold-ids`` must be those the runs were trained with: each (seed, fold) is
scored on the test split its members never saw. The methods:

- ``nms``: the members' raw boxes pooled and NMS over them: the one ONNX graph that
  ``qcloop train --recipe a,b,c`` registers (components/ensemble.py); the baseline.
- ``flip``: test-time augmentation; every member also runs on the mirrored image
  (left-right, inside the graph: its boxes mirrored back), all pooled by NMS.
- ``wbf``: weighted boxes fusion (Solovyev et al., 2019): each member's boxes after
  its own NMS; boxes of different members that overlap by more than ``--wbf-iou``
  become one, at the confidence-weighted mean of their corners, scored by the sum of
  their confidences over the member count (a box one member alone sees keeps a third
  of its score in a three-member ensemble).
- ``flip+wbf``: both, the mirrored runs counted as members.

The table gives each method's test mAP50-95 and its paired difference to ``nms`` over
the same (seed, fold) with its standard error; results go to
``<runs>/fusion-<members>.json`` (e.g. ``fusion-reference,scratch.json``). Only ``nms``
is what the loop serves: the others are measured here to decide whether the edge agent
and the evaluation should learn them (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import common, training

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("nms", "flip", "wbf", "flip+wbf")


def mirrored(src: Path, dst: Path) -> Path:
    """``dst``: the ONNX detector ``src`` run on its input mirrored left-right, its boxes
    mirrored back (x centre -> width - x centre), so it reads the same images as ``src``.

    Needs a fixed input width (``PipelineError`` for a free one): export at one size.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from qcloop.errors import PipelineError

    model = onnx.load(str(src))
    graph = model.graph
    image, output = graph.input[0].name, graph.output[0].name
    width = graph.input[0].type.tensor_type.shape.dim[3].dim_value
    if not width:
        raise PipelineError(f"{src}: the input width is free; export it at a fixed --imgsz")

    def const(name: str, value: list[int] | float) -> str:
        dtype = np.float32 if isinstance(value, float) else np.int64
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    flipped, raw = "mirror/images", "mirror/raw"
    for node in graph.node:
        node.input[:] = [flipped if name == image else name for name in node.input]
        node.output[:] = [raw if name == output else name for name in node.output]
    last, first, step = const("mirror/last", [-1]), const("mirror/min", [-(2**63)]), "mirror/step"
    const(step, [-1])
    rows = [const(f"mirror/row{k}", [k]) for k in (0, 1)] + [const("mirror/end", [2**31])]
    axis = const("mirror/axis1", [1])
    before = [
        helper.make_node("Slice", [image, last, first, const("mirror/axis3", [3]), step], [flipped])
    ]
    after = [
        helper.make_node("Slice", [raw, rows[0], rows[1], axis], ["mirror/cx"]),
        helper.make_node("Slice", [raw, rows[1], rows[2], axis], ["mirror/rest"]),
        helper.make_node("Sub", [const("mirror/width", float(width)), "mirror/cx"], ["mirror/x"]),
        helper.make_node("Concat", ["mirror/x", "mirror/rest"], [output], axis=1),
    ]
    nodes = before + list(graph.node) + after
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def weighted_fusion(members: list[Any], iou_threshold: float) -> Any:
    """Weighted boxes fusion of ``members`` (each a tensor of rows x1, y1, x2, y2, conf,
    cls after its own NMS): the fused rows, most confident first.

    Boxes are taken most confident first; one joins the cluster of the same class whose
    fused box it overlaps most, by more than ``iou_threshold``, unless its member is in
    that cluster already, else it starts one. A cluster's box is the confidence-weighted
    mean of its boxes' corners, its confidence their sum over ``len(members)``.
    """
    import torch
    from torchvision.ops import box_iou

    tagged = [
        torch.cat([rows[:, :6].float(), torch.full((len(rows), 1), float(index))], 1)
        for index, rows in enumerate(members)
    ]
    pool = torch.cat(tagged) if tagged else torch.zeros((0, 7))
    pool = pool[pool[:, 4].argsort(descending=True)]
    fused: list[Any] = []  # per cluster: its fused row (x1, y1, x2, y2, conf sum, cls)
    boxes: list[list[Any]] = []
    for row in pool:
        best = -1
        if fused:
            overlap = box_iou(row[None, :4], torch.stack(fused)[:, :4])[0]
            for k, cluster in enumerate(boxes):
                if fused[k][5] != row[5] or any(b[6] == row[6] for b in cluster):
                    overlap[k] = 0.0
            k = int(overlap.argmax())
            best = k if overlap[k] > iou_threshold else -1
        if best < 0:
            boxes.append([row])
            fused.append(row[:6].clone())
            continue
        boxes[best].append(row)
        cluster = torch.stack(boxes[best])
        weights = cluster[:, 4:5]
        fused[best][:4] = (cluster[:, :4] * weights).sum(0) / weights.sum()
        fused[best][4] = weights.sum()
    if not fused:
        return torch.zeros((0, 6))
    out = torch.stack(fused)
    out[:, 4] = out[:, 4] / max(len(members), 1)
    return out[out[:, 4].argsort(descending=True)]


@contextmanager
def fused_validation(anchors: list[int], iou_threshold: float) -> Iterator[None]:
    """Within: ultralytics' detection validator fuses an ensemble's members by
    ``weighted_fusion`` instead of one NMS over them; ``anchors`` are the members' anchor
    counts, in the order their raw boxes are concatenated (components/ensemble.py)."""
    from ultralytics.models.yolo.detect import val
    from ultralytics.utils import nms

    original = val.DetectionValidator.postprocess

    def postprocess(self: Any, preds: Any) -> list[dict[str, Any]]:
        raw = preds[0] if isinstance(preds, (list, tuple)) else preds
        if raw.shape[-1] != sum(anchors):
            raise ValueError(f"{raw.shape[-1]} anchors, the members have {sum(anchors)}")
        starts = [sum(anchors[:k]) for k in range(len(anchors))]
        per_member = [
            nms.non_max_suppression(
                raw[..., start : start + count],
                self.args.conf,
                self.args.iou,
                multi_label=True,
                max_det=self.args.max_det,
            )
            for start, count in zip(starts, anchors, strict=True)
        ]
        out = []
        for image in range(raw.shape[0]):
            rows = weighted_fusion([m[image] for m in per_member], iou_threshold)
            rows = rows[: self.args.max_det]
            out.append({"bboxes": rows[:, :4], "conf": rows[:, 4], "cls": rows[:, 5],
                        "extra": rows[:, 6:]})  # fmt: skip
        return out

    val.DetectionValidator.postprocess = postprocess
    try:
        yield
    finally:
        val.DetectionValidator.postprocess = original


def anchor_count(path: Path) -> int:
    """The anchors of a single ONNX detector's raw output ``[1, 4 + nc, anchors]``."""
    import onnx

    return int(onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim[2].dim_value)


def score(
    method: str, parts: list[Path], dataset: Path, work: Path, imgsz: int, wbf_iou: float
) -> dict[str, Any]:
    """The test metrics of ``parts`` fused by ``method`` on ``dataset``'s test split."""
    from components.ensemble import merge_onnx
    from components.evaluate import evaluate_onnx

    members = list(parts)
    if method.startswith("flip"):
        members += [mirrored(p, work / f"mirrored-{k}.onnx") for k, p in enumerate(parts)]
    merged = merge_onnx(members, work / f"{method}.onnx")
    if not method.endswith("wbf"):
        return evaluate_onnx(merged, dataset, imgsz=imgsz).model_dump()
    with fused_validation([anchor_count(p) for p in members], wbf_iou):
        return evaluate_onnx(merged, dataset, imgsz=imgsz).model_dump()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Score ways of fusing an ensemble's members on the runs of bench_recipes."
    )
    common.add_run_options(parser)
    parser.add_argument("--ensemble", required=True, help="members, e.g. reference,scratch")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--wbf-iou", type=float, default=0.55)
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    members = [m.strip() for m in args.ensemble.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    try:
        for member in members:
            training.parse_variant(member)
        if len(members) < 2:
            raise ValueError(f"--ensemble {args.ensemble}: name 2 or more variants")
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"--methods {args.methods}: use some of {', '.join(METHODS)}")
        folds = common.fold_selection(args.folds, args.fold_ids) or [-1]
        seeds = [int(s) for s in args.seeds.split(",")]
    except Exception as exc:
        print(f"bench_fusion: {exc}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    results_path = args.runs / f"fusion-{','.join(members)}.json"
    with tempfile.TemporaryDirectory(prefix="qcloop-fusion-") as tmp:
        work = Path(tmp)
        splits = common.run_splits(args.data, args.folds, folds, seeds, work)
        for data, fold, seed, labels in splits:
            parts, train_s, missing = common.ensemble_runs(
                args.runs,
                members,
                seed,
                fold,
                lambda _, __, folder: common.finished_run(folder, args.imgsz),
            )
            for method in methods:
                row: dict[str, Any] = {"variant": method, **labels}
                if missing:
                    member, member_seed, folder = missing
                    error = f"no finished run of {member} seed {member_seed} in {folder}"
                    results.append({**row, "error": error})
                    continue
                where = work / f"{method}-seed{seed}-fold{fold}"
                where.mkdir()
                try:
                    metrics = score(method, parts, data, where, args.imgsz, args.wbf_iou)
                except Exception as exc:
                    results.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                results.append({**row, "train_s": train_s, **metrics})
                print(f"bench_fusion: {json.dumps(results[-1])}", flush=True)
            results_path.write_text(json.dumps(results, indent=2))
    print(f"\nensemble {','.join(members)}; test mAP50-95 by way of fusing the members")
    print("\n".join(common.summarise(results, methods)))
    print(f"results: {results_path}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

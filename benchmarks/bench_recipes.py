"""Training recipes against each other: train, export and score each on the same test split.

    .venv/bin/python -m benchmarks.bench_recipes [--data DIR] [--variants reference,scratch+avg10]
        [--epochs 150] [--imgsz 480] [--model-size n] [--batch 16] [--patience 50] [--device cpu|0]
        [--seeds 0] [--folds K [--fold-ids 0,1]] [--jobs 1] [--workers N]
        [--ensemble reference,scratch+avg10] [--reuse] [--save-period N]
        [--out .qcloop/bench/recipes]
    .venv/bin/python -m benchmarks.bench_recipes --summary RESULTS.json [RESULTS.json ...]

Each variant is ``RECIPE[@SIZE][+avgK][+KEY=VALUE ...][+consensus][+pasteK]``
(``benchmarks.training``): a recipe, the model size (default ``--model-size``; e.g.
``scratch@n-p2``, YOLOv8n with a stride-4 head), with ``+avgK`` the EMA weights of
the last K epochs averaged (kept when as good on val), with ``+KEY=VALUE``
ultralytics training arguments on top of the recipe's (``reference+box=12+scale=0.2``),
with ``+consensus`` the train labels of every part photographed again redrawn one way
first (its medoid photo's boxes, ``bench_label_agreement.consensus_copy``; val and test
labels untouched), and with ``+paste`` (``+pasteK``) 1 (K) real scratch marks pasted
into every labelled train photo first (``paste_scratches.paste_copy``; val and test
untouched). Training, ``export_onnx`` and ``evaluate_onnx`` are the pipeline's, so a
plain variant's figure (``reference``, ``scratch`` at n or s) is what ``qcloop train
--recipe R --model-size SIZE`` would register.
``--data`` is a dataset version folder (``qcloop dataset pull v1 --out DIR``: its capture-grouped
splits are used as they are) or a plain YOLO folder, imported here into a throw-away
workspace the way ``qcloop dataset import`` splits it (default
../shared/datasets/metal-tags). Every variant is trained once per seed; ``--jobs``
trains that many at once (on one GPU several small runs share it well). The first
variant is the baseline: the table gives each one's test mAP50-95 (mean over seeds)
and its difference to the baseline, measured in this run. A run with averaging
also scores its ``best.pt`` on the test split (``best_pt_map50_95``: the same
training without the average). Results go to ``<out>/results.json``, rewritten as
each run finishes (a run that fails is recorded with its error, the others go on);
each run's weights and ONNX stay under ``<out>``.

``--folds K`` cross-validates by capture instead of using the version's one test
split: the captures, in time order, are cut into K blocks; fold i tests on block i,
validates on block i+1 and trains on the rest, so every capture is tested once and
no capture is ever in two splits. Every (variant, seed, fold) is one run
(``--fold-ids`` runs some folds only, e.g. half of them per call).
The table then also gives each variant's paired difference to the baseline (same
seed, same fold) with its standard error: the figure that says whether a recipe
beats the baseline by more than the noise of one small test split.

``--ensemble A,B`` also scores, for every (seed, fold), the runs of variants A and B
pooled into one ONNX graph (components/ensemble.py: what ``qcloop train --recipe a,b``
registers) on the same test split: a row ``ensemble(A,B)`` whose train time is the
members' sum. A variant named again is its run with the next seed, as in the
pipeline (``--ensemble reference,scratch,reference``: the reference of seed s + 1),
taken from this call's runs or from a finished run's folder under ``--out``.
``--reuse`` takes the figures of every run whose folder under ``--out`` holds its
``result.json`` (an earlier call's, or a run copied from a GPU box) instead of
training it again, exporting its ONNX from its weights if missing: e.g. to add an
ensemble to finished runs.

``--summary`` prints the table of earlier runs' ``results.json`` files together
(e.g. the two halves of a cross-validation run in two calls), trains nothing;
the first variant found is the baseline unless ``--variants`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_DATA,
    ROOT,
    configure_bench_logging,
    dataset_folder,
    ensemble_name,
    ensemble_runs,
    finished_run,
    fold_dataset,
    fold_selection,
    run_folder,
    run_key,
    summarise,
)
from benchmarks.training import parse_variant, train_variant
from components.parallel import forwarded_logs

DEFAULT_VARIANTS = "reference,scratch+avg10"


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train, export and score one (variant, seed); the figures as a dict."""
    from components.evaluate import evaluate_onnx
    from components.export import export_onnx

    out = Path(job["out"])
    saved = out / "result.json"
    reused = finished_run(out, job["imgsz"]) if job.get("reuse") else None
    if reused is not None:  # trained by an earlier call: its figures stand
        print(f"bench_recipes: {out.name}: reused (--reuse)", flush=True)
        return reused
    dataset = Path(job["dataset"])
    relabelled = None
    if job.get("consensus"):  # the train labels drawn one way per part; val, test as they are
        from benchmarks.bench_label_agreement import consensus_copy

        relabelled = consensus_copy(dataset, out / "consensus-data")
        dataset = out / "consensus-data"
        print(f"bench_recipes: {out.name}: {relabelled} train photos relabelled", flush=True)
    pasted = None
    if job.get("paste"):  # more scratches in the train photos; val, test as they are
        from benchmarks.paste_scratches import paste_copy

        pasted = paste_copy(dataset, out / "pasted-data", job["paste"], seed=job["seed"])
        dataset = out / "pasted-data"
        print(f"bench_recipes: {out.name}: {pasted} scratch marks pasted", flush=True)
    started = time.perf_counter()
    weights = train_variant(
        dataset,
        out,
        epochs=job["epochs"],
        imgsz=job["imgsz"],
        batch=job["batch"],
        device=job["device"],
        seed=job["seed"],
        patience=job["patience"],
        recipe=job["recipe"],
        model_size=job["model_size"],
        average_last=job["average_last"],
        workers=job.get("workers"),
        threads=job.get("threads"),
        save_period=job.get("save_period", -1),
        hyper=job.get("hyper"),
    )
    train_s = time.perf_counter() - started
    onnx = export_onnx(weights, out / "model.onnx", imgsz=job["imgsz"])
    metrics = evaluate_onnx(onnx, dataset, imgsz=job["imgsz"], split="test")
    result = {
        "variant": job["variant"],
        "seed": job["seed"],
        **({"fold": job["fold"]} if "fold" in job else {}),
        "model_size": job["model_size"],
        "weights": weights.name,
        "train_s": round(train_s, 1),
        **({} if relabelled is None else {"relabelled": relabelled}),
        **({} if pasted is None else {"pasted": pasted}),
        **metrics.model_dump(),
    }
    best = out / "run" / "weights" / "best.pt"
    if job["average_last"] > 1:  # the same training without the average, for the ablation
        if weights == best:
            result["best_pt_map50_95"] = result["map50_95"]
        else:
            best_onnx = export_onnx(best, out / "best.onnx", imgsz=job["imgsz"])
            best_metrics = evaluate_onnx(best_onnx, dataset, imgsz=job["imgsz"], split="test")
            result["best_pt_map50_95"] = best_metrics.map50_95
    saved.write_text(json.dumps(result, indent=2))
    return result


def score_ensembles(
    jobs: list[dict[str, Any]], results: list[dict[str, Any]], members: list[str], out: Path
) -> list[dict[str, Any]]:
    """For every (seed, fold): the runs of ``members`` pooled into one ONNX graph
    (components/ensemble.py, what ``qcloop train --recipe a,b`` registers), scored on
    the same test split. A variant named again is its run with the next seed
    (``components.recipes.member_seeds``), from this call or a finished run's folder under
    ``out``. One result row each, or its error."""
    from components.ensemble import merge_onnx
    from components.evaluate import evaluate_onnx

    name = ensemble_name(members)
    runs = {(j["variant"], run_key(j)): j for j in jobs}
    done = {(r["variant"], run_key(r)): r for r in results if "error" not in r}
    rows = []
    for key in sorted({run_key(j) for j in jobs}):
        seed, fold = key
        labels = {"variant": name, "seed": seed, **({} if fold < 0 else {"fold": fold})}
        job = runs[(members[0], key)]

        def result_of(
            member: str, member_seed: int, folder: Path, fold: int = fold, imgsz: int = job["imgsz"]
        ) -> dict[str, Any] | None:
            result = done.get((member, (member_seed, fold)))
            if result is None and (member, (member_seed, fold)) not in runs:
                result = finished_run(folder, imgsz)  # an earlier call's run
            return result

        parts, train_s, missing = ensemble_runs(out, members, seed, fold, result_of)
        if missing:
            member, member_seed, _ = missing
            rows.append(
                {**labels, "error": f"the run of {member} seed {member_seed} failed or is missing"}
            )
            continue
        where = out / (f"ensemble-seed{seed}" + ("" if fold < 0 else f"-fold{fold}"))
        try:
            merged = merge_onnx(parts, where / "model.onnx")
            metrics = evaluate_onnx(merged, Path(job["dataset"]), imgsz=job["imgsz"])
        except Exception as exc:
            rows.append({**labels, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({**labels, "weights": "model.onnx", "train_s": train_s, **metrics.model_dump()})
        print(f"bench_recipes: {name} seed {seed} fold {fold}: {json.dumps(rows[-1])}", flush=True)
    return rows


def run_all(jobs: list[dict[str, Any]], parallel: int, results_path: Path) -> list[dict[str, Any]]:
    """Every job's result (or its error), in job order; ``results_path`` rewritten as each ends."""
    done: dict[int, dict[str, Any]] = {}

    def record(index: int, result: dict[str, Any]) -> None:
        done[index] = result
        results_path.write_text(json.dumps([done[i] for i in sorted(done)], indent=2))
        print(f"bench_recipes: {len(done)}/{len(jobs)} done: {json.dumps(result)}", flush=True)

    def settle(index: int, outcome: Callable[[], dict[str, Any]]) -> None:
        try:
            record(index, outcome())
        except Exception as exc:
            job = jobs[index]
            error = f"{type(exc).__name__}: {exc}"
            keys = {k: job[k] for k in ("variant", "seed", "fold") if k in job}
            record(index, {**keys, "error": error})

    if parallel > 1:
        context = get_context("spawn")
        with (
            forwarded_logs(context) as (initializer, initargs),
            ProcessPoolExecutor(
                parallel, mp_context=context, initializer=initializer, initargs=initargs
            ) as pool,
        ):
            futures: dict[Future[dict[str, Any]], int] = {
                pool.submit(run_one, job): i for i, job in enumerate(jobs)
            }
            for future in as_completed(futures):
                settle(futures[future], future.result)
    else:
        for index, job in enumerate(jobs):
            settle(index, lambda job=job: run_one(job))
    return [done[i] for i in sorted(done)]


def default_workers(device: str, parallel: int) -> int | None:
    """Loader processes per run: the pipeline's default alone, the cores shared when parallel."""
    from components.threads import loader_workers

    if parallel <= 1 or not loader_workers(device):  # none on the CPU, up to 8 on a GPU
        return None
    return loader_workers(device, parallel)


def default_threads(parallel: int) -> int | None:
    """CPU training threads per run: all cores alone (as the pipeline), else shared."""
    from components.threads import shared_cpu_threads

    return None if parallel <= 1 else shared_cpu_threads(parallel)


def print_summary(paths: list[Path], variants: str | None) -> int:
    """The table of saved results (several files together); 2 if one cannot be read."""
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            results += json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"bench_recipes: {path}: cannot read results ({exc})", file=sys.stderr)
            return 2
    names = [v.strip() for v in variants.split(",")] if variants else []
    for result in results:
        if result["variant"] not in names:
            names.append(result["variant"])
    print("\n".join(summarise(results, names)))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--variants",
        help=f"comma-separated, the first is the baseline (default {DEFAULT_VARIANTS})",
    )
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--imgsz", type=int, default=480)
    parser.add_argument(
        "--model-size", default="n", help="of the variants without @SIZE: n, s, n-p2, s-p2"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="cross-validate over K capture blocks (default: the version's own splits)",
    )
    parser.add_argument(
        "--fold-ids", default=None, help="with --folds: comma-separated folds to run (default all)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loading processes per run (default: the pipeline's; cores/jobs on a GPU)",
    )
    parser.add_argument(
        "--ensemble",
        help="comma-separated variants (of --variants) whose models are also scored pooled "
        "into one ONNX, per seed and fold (what qcloop train --recipe a,b registers)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="a run whose folder under --out holds its result.json is not trained again",
    )
    parser.add_argument(
        "--save-period",
        type=int,
        default=-1,
        help="also keep every Nth epoch's weights (run/weights/epochK.pt) for "
        "benchmarks.bench_snapshots (default: off)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".qcloop" / "bench" / "recipes")
    parser.add_argument(
        "--summary", type=Path, nargs="+", help="print the table of these results.json files"
    )
    args = parser.parse_args()
    configure_bench_logging()
    if args.summary:
        return print_summary(args.summary, args.variants)
    try:
        variants = [v.strip() for v in (args.variants or DEFAULT_VARIANTS).split(",") if v.strip()]
        parsed = {v: parse_variant(v, args.model_size) for v in variants}
        seeds = [int(s) for s in args.seeds.split(",")]
        fold_ids = fold_selection(args.folds, args.fold_ids)
        members = [v.strip() for v in args.ensemble.split(",")] if args.ensemble else []
        if members and (len(members) < 2 or not set(members) <= set(variants)):
            raise ValueError(
                f"--ensemble {args.ensemble}: name 2 or more of the variants "
                f"({', '.join(variants)})"
            )
    except Exception as exc:
        print(f"bench_recipes: {exc}", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"bench_recipes: {args.data}: no such folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcloop-recipes-") as tmp:
        dataset = dataset_folder(args.data.resolve(), Path(tmp))
        try:
            datasets = {
                fold: fold_dataset(dataset, args.folds, fold, Path(tmp) / f"fold-{fold}")
                for fold in fold_ids
            } or {None: dataset}
        except ValueError as exc:
            print(f"bench_recipes: {exc}", file=sys.stderr)
            return 2
        workers = (
            args.workers if args.workers is not None else default_workers(args.device, args.jobs)
        )
        threads = default_threads(args.jobs)
        jobs = [
            {
                "variant": variant,
                "recipe": recipe,
                "average_last": avg,
                "model_size": size,
                "hyper": hyper,
                "consensus": consensus,
                "paste": paste,
                "seed": seed,
                **({} if fold is None else {"fold": fold}),
                "dataset": str(data),
                "out": str(
                    run_folder(args.out.resolve(), variant, seed, -1 if fold is None else fold)
                ),
                "epochs": args.epochs,
                "imgsz": args.imgsz,
                "batch": args.batch,
                "patience": args.patience,
                "device": args.device,
                "workers": workers,
                "threads": threads,
                "save_period": args.save_period,
                "reuse": args.reuse,
            }
            for fold, data in datasets.items()
            for variant, (recipe, avg, size, hyper, consensus, paste) in parsed.items()
            for seed in seeds
        ]
        print(f"bench_recipes: {len(jobs)} runs ({args.jobs} at once) on {dataset}", flush=True)
        results = run_all(jobs, args.jobs, args.out / "results.json")
        if members:
            results += score_ensembles(jobs, results, members, args.out.resolve())
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
            variants.append(ensemble_name(members))
    where = (
        f"test splits of folds {','.join(map(str, fold_ids))} of {args.folds} by capture"
        if fold_ids
        else "test split"
    )
    print(
        f"{args.epochs} epochs, imgsz {args.imgsz}, model size {args.model_size}"
        + (" (but where a variant names its @SIZE)" if any("@" in v for v in variants) else "")
        + f", batch {args.batch}, device {args.device}, "
        f"seeds {args.seeds}; {where} of {args.data}"
    )
    print("\n".join(summarise(results, variants)))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Training recipes against each other: train, export and score each on the same test split.

    .venv/bin/python scripts/bench_recipes.py [--data DIR] [--variants reference,scratch+avg10]
        [--epochs 150] [--imgsz 480] [--model-size n] [--batch 16] [--patience 50] [--device cpu|0]
        [--seeds 0] [--folds K [--fold-ids 0,1]] [--jobs 1] [--workers N]
        [--ensemble reference,scratch+avg10] [--reuse] [--save-period N]
        [--out .qcloop/bench/recipes]
    .venv/bin/python scripts/bench_recipes.py --summary RESULTS.json [RESULTS.json ...]

Each variant is ``RECIPE[@SIZE][+avgK][+KEY=VALUE ...][+consensus][+pasteK]``: a recipe of
``components.train.RECIPES``, the model size (default ``--model-size``; e.g.
``scratch@n-p2``, YOLOv8n with a stride-4 head), with ``+avgK`` the EMA weights of
the last K epochs averaged (kept when as good on val), with ``+KEY=VALUE``
ultralytics training arguments on top of the recipe's (``reference+box=12+scale=0.2``:
a candidate tried here before it becomes a recipe), and with ``+consensus`` the train
labels of every part photographed again redrawn one way first (its medoid photo's
boxes, ``bench_label_agreement.consensus_copy``; val and test labels untouched), and
with ``+paste`` (``+pasteK``) 1 (K) real scratch marks pasted into every labelled
train photo first (``paste_scratches.paste_copy``; val and test untouched): the
same ``components.train.train_yolo``, ``export_onnx`` and ``evaluate_onnx`` the
training pipeline runs, so a figure here
is what ``qcloop train --recipe R --model-size SIZE --average-last K`` would register
(a variant with ``+KEY=VALUE``, ``+consensus`` or ``+paste``: once that is part of the
pipeline).
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
(``--fold-ids`` runs some folds only, e.g. half of them per call on a lent GPU).
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
``result.json`` (an earlier call's, or a GPU machine's run fetched here) instead of
training it again, exporting its ONNX from its weights if missing: e.g. to add an
ensemble to finished runs.

``--summary`` prints the table of earlier runs' ``results.json`` files together
(e.g. the two halves of a cross-validation run in two calls), trains nothing;
the first variant found is the baseline unless ``--variants`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = "reference,scratch+avg10"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


class Variant(NamedTuple):
    """A parsed variant: recipe, epochs averaged (0: none), model size, extra
    hyperparameters, whether the train labels are drawn one way per part first, and how
    many scratch marks are pasted into every labelled train photo first (0: none)."""

    recipe: str
    average_last: int
    model_size: str
    hyper: dict[str, Any]
    consensus: bool = False
    paste: int = 0


def parse_variant(text: str, model_size: str = "n") -> Variant:
    """``"scratch+avg10"`` -> ``("scratch", 10, model_size, {})``;
    ``"scratch@n-p2"`` -> ``("scratch", 0, "n-p2", {})``;
    ``"reference+box=12+scale=0.2"`` -> ``("reference", 0, model_size, {"box": 12, "scale": 0.2})``
    (ultralytics training arguments on top of the recipe: a candidate tried before it
    becomes a recipe of ``components.train.RECIPES``); ``"reference+consensus"``: the
    run trains on labels drawn one way for every part photographed again
    (``bench_label_agreement.consensus_copy`` of the train split); ``"reference+paste2"``:
    two real scratch marks pasted into every labelled train photo first
    (``paste_scratches.paste_copy``; ``+paste`` is one)."""
    import yaml

    from components.train import hyper_overrides, model_config, recipe_overrides

    head, *suffixes = text.split("+")
    recipe, at, size = head.partition("@")
    recipe_overrides(recipe)  # a PipelineError naming the recipes
    average, hyper, consensus, paste = 0, {}, False, 0
    for suffix in suffixes:
        key, eq, value = suffix.partition("=")
        if suffix == "consensus":
            consensus = True
        elif suffix == "paste" or (
            suffix.startswith("paste") and suffix[5:].isdigit() and int(suffix[5:]) > 0
        ):
            paste = int(suffix[5:] or 1)
        elif eq and key and value:
            hyper[key] = yaml.safe_load(value)
        elif suffix.startswith("avg") and suffix[3:].isdigit() and int(suffix[3:]) > 1:
            average = int(suffix[3:])
        elif suffix.startswith("avg"):
            raise ValueError(f"variant {text!r}: write RECIPE+avgK with K > 1, e.g. scratch+avg10")
        else:
            raise ValueError(
                f"variant {text!r}: {suffix!r} is neither avgK, KEY=VALUE, consensus nor "
                "pasteK (e.g. scratch+avg10, reference+box=12, reference+consensus, "
                "reference+paste2)"
            )
    hyper_overrides(hyper)  # a PipelineError naming an unknown or reserved key
    size = size if at else model_size
    model_config(size)  # a PipelineError naming the sizes
    return Variant(recipe, average, size, hyper, consensus, paste)


def dataset_folder(data: Path, work: Path) -> Path:
    """``data`` if it is a dataset version folder, else ``data`` imported as v1 under ``work``."""
    if (data / "manifest.json").is_file():
        return data
    from qcloop.dataset import import_yolo_folder, materialize
    from qcloop.settings import Settings, StoreSettings

    settings = Settings(
        home=work / "home",
        workspace=work / "workspace",
        store=StoreSettings(path=work / "store"),
        dvc={"remote": str(work / "dvc-remote")},
    )
    manifest, _ = import_yolo_folder(settings, data, progress=lambda _: None)
    materialize(settings, manifest.version, work / "dataset")
    return work / "dataset"


def fold_blocks(groups: list[str], folds: int) -> list[list[str]]:
    """The capture groups, sorted (their names are capture times), in ``folds`` blocks."""
    ordered = sorted(set(groups))
    if not 3 <= folds <= len(ordered):
        raise ValueError(
            f"--folds {folds}: use 3 or more, and at most the number of captures "
            f"({len(ordered)}): each fold needs its own test, val and train captures"
        )
    size, extra = divmod(len(ordered), folds)
    blocks, start = [], 0
    for index in range(folds):
        end = start + size + (1 if index < extra else 0)
        blocks.append(ordered[start:end])
        start = end
    return blocks


def fold_selection(folds: int, fold_ids: str | None) -> list[int]:
    """The folds to run: none without ``--folds``, else ``--fold-ids`` (default all)."""
    if not folds:
        if fold_ids:
            raise ValueError("--fold-ids needs --folds")
        return []
    if folds < 3:
        raise ValueError(f"--folds {folds}: use 3 or more (test, val and train blocks)")
    chosen = [int(f) for f in fold_ids.split(",")] if fold_ids else list(range(folds))
    wrong = [f for f in chosen if not 0 <= f < folds]
    if wrong:
        raise ValueError(f"--fold-ids {wrong}: folds are numbered 0..{folds - 1}")
    return chosen


def fold_dataset(dataset: Path, folds: int, fold: int, dest: Path) -> Path:
    """``dest``: a copy of dataset folder ``dataset`` with fold ``fold``'s splits.

    Test is the fold's block of captures, val the next block, train the rest.
    """
    import shutil

    from qcloop.contracts import DatasetManifest

    manifest = DatasetManifest.load(dataset / "manifest.json")
    blocks = fold_blocks([img.group for img in manifest.images], folds)
    test, val = set(blocks[fold]), set(blocks[(fold + 1) % folds])
    images = [
        img.model_copy(
            update={
                "split": "test" if img.group in test else "val" if img.group in val else "train"
            }
        )
        for img in manifest.images
    ]
    shutil.copytree(dataset, dest, ignore=shutil.ignore_patterns("*.cache", ".*", "manifest.json"))
    save_manifest_copy(
        manifest, images, f"{manifest.source} (fold {fold} of {folds} by capture)", dest
    )
    return dest


def save_manifest_copy(manifest: Any, images: list[Any], source: str, dest: Path) -> None:
    """Save ``manifest`` (a ``DatasetManifest``) with ``images`` instead of its own, their
    counts, and ``source``, as ``dest/manifest.json``; validated first (a group spread
    over two splits, counts that do not match: a ``ValueError``)."""
    from qcloop.contracts import DatasetManifest, count_splits

    copied = manifest.model_copy(
        update={"images": images, "counts": count_splits(images), "source": source}
    )
    DatasetManifest.model_validate(copied.model_dump()).save(dest / "manifest.json")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of the scripts that score finished runs again: where the runs are and
    the data, folds, seeds and image size they were trained with."""
    parser.add_argument("--runs", type=Path, required=True, help="bench_recipes --out folder")
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared/datasets/metal-tags",
        help="the dataset the runs were trained on (default ../shared/datasets/metal-tags)",
    )
    parser.add_argument("--folds", type=int, default=0, help="the runs' --folds (0: none)")
    parser.add_argument("--fold-ids", help="the folds to score, comma-separated (default all)")
    parser.add_argument("--seeds", default="0", help="the runs' seeds, comma-separated")
    parser.add_argument("--imgsz", type=int, default=480, help="the runs' image size")


def run_splits(
    data: Path, folds: int, fold_ids: list[int], seeds: list[int], work: Path
) -> Iterator[tuple[Path, int, int, dict[str, int]]]:
    """For the scripts that score finished runs again: each (dataset, fold, seed, labels)
    of ``fold_ids`` (-1: no folds) and ``seeds``, the dataset being the splits that
    fold's runs were trained and tested on (made under ``work``), the labels those of
    a result row (``{"seed": 0, "fold": 4}``)."""
    dataset = dataset_folder(data.resolve(), work / "import")
    for fold in fold_ids:
        split = dataset if fold < 0 else fold_dataset(dataset, folds, fold, work / f"fold-{fold}")
        for seed in seeds:
            yield split, fold, seed, {"seed": seed, **({} if fold < 0 else {"fold": fold})}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train, export and score one (variant, seed); the figures as a dict."""
    from components.evaluate import evaluate_onnx
    from components.export import export_onnx
    from components.train import model_config, train_yolo

    out = Path(job["out"])
    saved = out / "result.json"
    reused = finished_run(out, job["imgsz"]) if job.get("reuse") else None
    if reused is not None:  # trained by an earlier call: its figures stand
        print(f"bench_recipes: {out.name}: reused (--reuse)", flush=True)
        return reused
    dataset = Path(job["dataset"])
    relabelled = None
    if job.get("consensus"):  # the train labels drawn one way per part; val, test as they are
        from bench_label_agreement import consensus_copy

        relabelled = consensus_copy(dataset, out / "consensus-data")
        dataset = out / "consensus-data"
        print(f"bench_recipes: {out.name}: {relabelled} train photos relabelled", flush=True)
    pasted = None
    if job.get("paste"):  # more scratches in the train photos; val, test as they are
        from paste_scratches import paste_copy

        pasted = paste_copy(dataset, out / "pasted-data", job["paste"], seed=job["seed"])
        dataset = out / "pasted-data"
        print(f"bench_recipes: {out.name}: {pasted} scratch marks pasted", flush=True)
    started = time.perf_counter()
    weights = train_yolo(
        dataset,
        out,
        epochs=job["epochs"],
        imgsz=job["imgsz"],
        batch=job["batch"],
        device=job["device"],
        seed=job["seed"],
        patience=job["patience"],
        recipe=job["recipe"],
        model_cfg=model_config(job["model_size"]),
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


def ensemble_name(members: list[str]) -> str:
    """The table's name of the ensemble of ``members`` (variants)."""
    return f"ensemble({','.join(members)})"


def run_folder(out: Path, variant: str, seed: int, fold: int) -> Path:
    """The folder of the run of ``variant`` with ``seed`` on ``fold`` (-1: no folds)."""
    return out / (f"{variant}-seed{seed}" + ("" if fold < 0 else f"-fold{fold}"))


def finished_run(folder: Path, imgsz: int) -> dict[str, Any] | None:
    """The ``result.json`` of a finished run's ``folder`` (its ONNX exported from its
    weights if missing), or None if it has none or failed."""
    saved = folder / "result.json"
    if not saved.is_file():
        return None
    result = json.loads(saved.read_text())
    if "error" in result:
        return None
    if not (folder / "model.onnx").is_file():
        from components.export import export_onnx

        export_onnx(
            folder / "run" / "weights" / result["weights"], folder / "model.onnx", imgsz=imgsz
        )
    return result


def ensemble_runs(
    out: Path,
    members: list[str],
    seed: int,
    fold: int,
    result_of: Callable[[str, int, Path], dict[str, Any] | None],
) -> tuple[list[Path], float, tuple[str, int, Path] | None]:
    """The ONNX files and summed train time of the runs of ``members`` under ``out`` for
    ``seed`` and ``fold`` (a variant named again: its run with the next seed,
    ``components.train.member_seeds``), ``result_of(variant, seed, folder)`` giving each
    run's result; and the first run without one (variant, seed, folder), or None."""
    from components.train import member_seeds

    parts, train_s = [], 0.0
    for member, member_seed in zip(members, member_seeds(members, seed), strict=True):
        folder = run_folder(out, member, member_seed, fold)
        result = result_of(member, member_seed, folder)
        if result is None:
            return parts, train_s, (member, member_seed, folder)
        parts.append(folder / "model.onnx")
        train_s += float(result["train_s"])
    return parts, train_s, None


def score_ensembles(
    jobs: list[dict[str, Any]], results: list[dict[str, Any]], members: list[str], out: Path
) -> list[dict[str, Any]]:
    """For every (seed, fold): the runs of ``members`` pooled into one ONNX graph
    (components/ensemble.py, what ``qcloop train --recipe a,b`` registers), scored on
    the same test split. A variant named again is its run with the next seed
    (``components.train.member_seeds``), from this call or a finished run's folder under
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
        except Exception as exc:  # noqa: BLE001 - keep the other keys' figures
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
        except Exception as exc:  # noqa: BLE001 - keep the other runs' figures
            job = jobs[index]
            error = f"{type(exc).__name__}: {exc}"
            keys = {k: job[k] for k in ("variant", "seed", "fold") if k in job}
            record(index, {**keys, "error": error})

    if parallel > 1:
        with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
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
    from components.train import loader_workers

    if parallel <= 1 or not loader_workers(device):  # none on the CPU, up to 8 on a GPU
        return None
    return loader_workers(device, parallel)


def default_threads(parallel: int) -> int | None:
    """CPU training threads per run: all cores alone (as the pipeline), else shared."""
    from components.train import shared_cpu_threads

    return None if parallel <= 1 else shared_cpu_threads(parallel)


def run_key(result: dict[str, Any]) -> tuple[int, int]:
    """(seed, fold) of a result: runs with the same key trained and tested on the same data."""
    return int(result["seed"]), int(result.get("fold", -1))


def paired_gap(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> str:
    """Mean of ``map50_95`` minus the baseline's over runs of the same (seed, fold), ± its se."""
    base = {run_key(r): float(r["map50_95"]) for r in base_rows}
    gaps = [float(r["map50_95"]) - base[run_key(r)] for r in rows if run_key(r) in base]
    if not gaps:
        return "-"
    if len(gaps) == 1:
        return f"{gaps[0]:+.4f} (1 pair)"
    se = statistics.stdev(gaps) / math.sqrt(len(gaps))
    return f"{statistics.mean(gaps):+.4f} ± {se:.4f} ({len(gaps)} pairs)"


def summarise(results: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """One table row per variant: mean test figures over runs and the gaps to the first.

    "vs baseline" is the difference of the means; "paired" the mean difference over
    runs with the same seed and fold as a baseline run, ± its standard error.
    """
    ok = [r for r in results if "error" not in r]
    means: dict[str, dict[str, float]] = {}
    for variant in variants:
        rows = [r for r in ok if r["variant"] == variant]
        if not rows:
            continue
        means[variant] = {
            key: statistics.mean(float(r[key]) for r in rows)
            for key in ("map50_95", "map50", "precision", "recall", "train_s")
        }
        means[variant]["runs"] = len(rows)
        if len(rows) > 1:  # the run-to-run spread: a gap inside it is no gain
            means[variant]["sd"] = statistics.stdev(float(r["map50_95"]) for r in rows)
        if all("best_pt_map50_95" in r for r in rows):
            means[variant]["best_pt"] = statistics.mean(float(r["best_pt_map50_95"]) for r in rows)
    base = means[variants[0]]["map50_95"] if variants[0] in means else None
    base_rows = [r for r in ok if r["variant"] == variants[0]]
    lines = [
        "| variant | runs | test mAP50-95 | sd | vs baseline | paired | mAP50 | P | R "
        "| train s | best.pt alone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, m in means.items():
        if variant == variants[0]:
            delta, paired = "baseline", "-"
        else:
            delta = "no baseline" if base is None else f"{m['map50_95'] - base:+.4f}"
            paired = paired_gap([r for r in ok if r["variant"] == variant], base_rows)
        alone = f"{m['best_pt']:.4f}" if "best_pt" in m else "-"
        sd = f"{m['sd']:.4f}" if "sd" in m else "-"
        lines.append(
            f"| {variant} | {m['runs']:.0f} | {m['map50_95']:.4f} | {sd} | {delta} | {paired} "
            f"| {m['map50']:.4f} "
            f"| {m['precision']:.3f} | {m['recall']:.3f} | {m['train_s']:.0f} | {alone} |"
        )
    failures = [r for r in results if "error" in r]
    lines += [
        f"FAILED {r['variant']} seed {r['seed']}"
        + (f" fold {r['fold']}" if "fold" in r else "")
        + f": {r['error']}"
        for r in failures
    ]
    return lines


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
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "metal-tags"
    )
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
        "scripts/bench_snapshots.py (default: off)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".qcloop" / "bench" / "recipes")
    parser.add_argument(
        "--summary", type=Path, nargs="+", help="print the table of these results.json files"
    )
    args = parser.parse_args()
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
    except Exception as exc:  # noqa: BLE001 - one clear line for any bad option
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

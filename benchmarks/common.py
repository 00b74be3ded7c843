"""What the benchmarks share: datasets, capture folds, run folders, results tables.

A run is one training of ``benchmarks.bench_recipes`` (a variant, a seed, a fold)
in its own folder; the other benchmarks score finished runs again.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "metal-tags"


def configure_bench_logging() -> None:
    """A benchmark's entry point: the project's records and the benchmarks' own on stderr,
    one line each (``qcloop.logs``), so that stdout holds the figures."""
    from qcloop.logs import configure_logging

    configure_logging()
    project = logging.getLogger("components")
    bench = logging.getLogger("benchmarks")
    bench.setLevel(project.level)
    bench.propagate = False
    bench.handlers[:] = project.handlers


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
    """The options of the benchmarks that score finished runs again: where the runs are and
    the data, folds, seeds and image size they were trained with."""
    parser.add_argument("--runs", type=Path, required=True, help="bench_recipes --out folder")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="the dataset the runs were trained on (default ../shared/datasets/metal-tags)",
    )
    parser.add_argument("--folds", type=int, default=0, help="the runs' --folds (0: none)")
    parser.add_argument("--fold-ids", help="the folds to score, comma-separated (default all)")
    parser.add_argument("--seeds", default="0", help="the runs' seeds, comma-separated")
    parser.add_argument("--imgsz", type=int, default=480, help="the runs' image size")


def run_splits(
    data: Path, folds: int, fold_ids: list[int], seeds: list[int], work: Path
) -> Iterator[tuple[Path, int, int, dict[str, int]]]:
    """For the benchmarks that score finished runs again: each (dataset, fold, seed, labels)
    of ``fold_ids`` (-1: no folds) and ``seeds``, the dataset being the splits that
    fold's runs were trained and tested on (made under ``work``), the labels those of
    a result row (``{"seed": 0, "fold": 4}``)."""
    dataset = dataset_folder(data.resolve(), work / "import")
    for fold in fold_ids:
        split = dataset if fold < 0 else fold_dataset(dataset, folds, fold, work / f"fold-{fold}")
        for seed in seeds:
            yield split, fold, seed, {"seed": seed, **({} if fold < 0 else {"fold": fold})}


def run_key(result: dict[str, Any]) -> tuple[int, int]:
    """(seed, fold) of a result: runs with the same key trained and tested on the same data."""
    return int(result["seed"]), int(result.get("fold", -1))


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


def ensemble_name(members: list[str]) -> str:
    """The table's name of the ensemble of ``members`` (variants)."""
    return f"ensemble({','.join(members)})"


def ensemble_runs(
    out: Path,
    members: list[str],
    seed: int,
    fold: int,
    result_of: Callable[[str, int, Path], dict[str, Any] | None],
) -> tuple[list[Path], float, tuple[str, int, Path] | None]:
    """The ONNX files and summed train time of the runs of ``members`` under ``out`` for
    ``seed`` and ``fold`` (a variant named again: its run with the next seed,
    ``components.recipes.member_seeds``), ``result_of(variant, seed, folder)`` giving each
    run's result; and the first run without one (variant, seed, folder), or None."""
    from components.recipes import member_seeds

    parts, train_s = [], 0.0
    for member, member_seed in zip(members, member_seeds(members, seed), strict=True):
        folder = run_folder(out, member, member_seed, fold)
        result = result_of(member, member_seed, folder)
        if result is None:
            return parts, train_s, (member, member_seed, folder)
        parts.append(folder / "model.onnx")
        train_s += float(result["train_s"])
    return parts, train_s, None


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

"""The recipe benchmark trains, exports and scores each variant on one test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from benchmarks import bench_recipes, common, training
from components.export import onnx_metadata
from qcloop.contracts import DatasetManifest
from tests.components.datasets import build_dataset, captures, yolo_folder

ROOT = Path(__file__).resolve().parents[2]


def test_variants_are_a_recipe_an_optional_model_size_and_average() -> None:
    from qcloop.errors import PipelineError

    parse = training.parse_variant
    assert parse("reference") == ("reference", 0, "n", {}, False, 0)
    assert parse("scratch+avg10") == ("scratch", 10, "n", {}, False, 0)
    assert parse("scratch", "s") == ("scratch", 0, "s", {}, False, 0)
    assert parse("scratch@n-p2+avg5", "s") == ("scratch", 5, "n-p2", {}, False, 0)
    hyper = {"box": 12, "scale": 0.2, "cos_lr": True}
    assert parse("reference+box=12+scale=0.2+cos_lr=true") == ("reference", 0, "n", hyper, False, 0)
    assert parse("scratch+avg5+mosaic=0") == ("scratch", 5, "n", {"mosaic": 0}, False, 0)
    assert parse("reference+consensus") == ("reference", 0, "n", {}, True, 0)
    assert parse("reference+paste") == ("reference", 0, "n", {}, False, 1)
    assert parse("reference+consensus+paste3") == ("reference", 0, "n", {}, True, 3)
    for bad in ("reference+paste0", "reference+pastex"):
        with pytest.raises(ValueError, match="neither avgK, KEY=VALUE, consensus nor pasteK"):
            parse(bad)
    with pytest.raises(PipelineError, match="'boxx': not an ultralytics training argument"):
        parse("reference+boxx=12")
    with pytest.raises(PipelineError, match="'epochs' is set by the training itself"):
        parse("reference+epochs=300")
    with pytest.raises(ValueError, match="'box' is neither avgK, KEY=VALUE, consensus nor pasteK"):
        parse("reference+box")
    with pytest.raises(PipelineError, match="recipe 'mosaic9'"):
        parse("mosaic9")
    with pytest.raises(PipelineError, match="model_size 'm': use one of n, s, n-p2, s-p2"):
        parse("scratch@m")
    for bad in ("scratch+avg", "scratch+avg1", "scratch+avgx"):
        with pytest.raises(ValueError, match="RECIPE\\+avgK with K > 1"):
            parse(bad)


def test_table_means_seeds_and_compares_with_the_first_variant() -> None:
    def row(variant: str, seed: int, m: float) -> dict[str, object]:
        return {
            "variant": variant,
            "seed": seed,
            "map50_95": m,
            "map50": 2 * m,
            "precision": 0.5,
            "recall": 0.25,
            "train_s": 10.0,
        }

    averaged = {**row("scratch+avg10", 0, 0.55), "best_pt_map50_95": 0.53}
    failed = {"variant": "scratch+avg10", "seed": 1, "error": "PipelineError: NaN loss"}
    results = [row("reference", 0, 0.50), row("reference", 1, 0.52), averaged, failed]
    table = common.summarise(results, ["reference", "scratch+avg10"])
    assert table[2] == (
        "| reference | 2 | 0.5100 | 0.0141 | baseline | - | 1.0200 | 0.500 | 0.250 | 10 | - |"
    )
    assert table[3].startswith(
        "| scratch+avg10 | 1 | 0.5500 | - | +0.0400 | +0.0500 (1 pair) | 1.1000 |"
    )
    assert table[3].endswith("| 0.5300 |")  # its best.pt alone, the ablation of the average
    assert table[4] == "FAILED scratch+avg10 seed 1: PipelineError: NaN loss"


def test_paired_gap_compares_runs_of_the_same_seed_and_fold() -> None:
    def row(variant: str, seed: int, fold: int, m: float) -> dict[str, object]:
        return {"variant": variant, "seed": seed, "fold": fold, "map50_95": m}

    base = [row("reference", 0, f, m) for f, m in enumerate((0.50, 0.60, 0.40))]
    other = [row("scratch", 0, f, m) for f, m in enumerate((0.52, 0.61, 0.43))]
    other.append(row("scratch", 1, 0, 0.90))  # no baseline run of seed 1: left out
    # gaps 0.02, 0.01, 0.03: mean 0.02, sd 0.01, se 0.01 / sqrt(3)
    assert common.paired_gap(other, base) == "+0.0200 ± 0.0058 (3 pairs)"
    assert common.paired_gap([row("scratch", 2, 0, 0.5)], base) == "-"


def test_folds_test_every_capture_once_and_never_split_one(
    metal_tags: Path, tmp_path: Path
) -> None:
    source = tmp_path / "v1"
    manifest = build_dataset(metal_tags, source, {"train": 2, "val": 1, "test": 1})
    groups = sorted({img.group for img in manifest.images})
    tested: list[str] = []
    for fold in range(3):
        dest = common.fold_dataset(source, 3, fold, tmp_path / f"fold-{fold}")
        fold_manifest = DatasetManifest.load(dest / "manifest.json")  # validated: counts, groups
        by_split = {
            split: {img.group for img in fold_manifest.images if img.split == split}
            for split in ("train", "val", "test")
        }
        assert all(by_split.values()) and not (by_split["test"] & by_split["val"])
        assert by_split["train"] | by_split["val"] | by_split["test"] == set(groups)
        tested += sorted(by_split["test"])
        assert fold_manifest.counts["test"].images == 4 * len(by_split["test"])
        assert (dest / fold_manifest.images[0].file).is_file()
        assert f"fold {fold} of 3" in fold_manifest.source
    assert tested == groups  # blocks in time order, each capture tested once
    assert [len(b) for b in common.fold_blocks(groups, 3)] == [2, 1, 1]
    with pytest.raises(ValueError, match="at most the number of captures \\(4\\)"):
        common.fold_blocks(groups, 5)


def test_fold_options_are_checked() -> None:
    assert common.fold_selection(0, None) == []
    assert common.fold_selection(6, None) == [0, 1, 2, 3, 4, 5]
    assert common.fold_selection(6, "3,4") == [3, 4]
    for folds, ids, message in (
        (2, None, "use 3 or more"),
        (6, "6", "numbered 0..5"),
        (0, "1", "needs --folds"),
    ):
        with pytest.raises(ValueError, match=message):
            common.fold_selection(folds, ids)


def test_a_failed_run_is_recorded_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run_one(job: dict[str, object]) -> dict[str, object]:
        if job["seed"] == 1:
            raise RuntimeError("CUDA out of memory")
        return {"variant": job["variant"], "seed": job["seed"], "map50_95": 0.5}

    monkeypatch.setattr(bench_recipes, "run_one", run_one)
    jobs = [{"variant": "reference", "seed": seed} for seed in (0, 1, 2)]
    results_path = tmp_path / "results.json"
    results = bench_recipes.run_all(jobs, 1, results_path)
    assert [r["seed"] for r in results] == [0, 1, 2]
    assert results[1] == {
        "variant": "reference",
        "seed": 1,
        "error": "RuntimeError: CUDA out of memory",
    }
    assert json.loads(results_path.read_text()) == results  # written as the runs end


def test_parallel_runs_on_a_gpu_share_the_cores_among_loaders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert bench_recipes.default_workers("0", 6) == 2
    assert bench_recipes.default_workers("0", 1) is None  # the pipeline's own default
    assert bench_recipes.default_workers("0", 40) == 1
    assert bench_recipes.default_workers("cpu", 4) is None  # no loader processes on the CPU


def test_parallel_runs_share_the_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("components.threads.cpu_threads", lambda: 16)
    assert bench_recipes.default_threads(1) is None  # the pipeline's own default: every core
    assert bench_recipes.default_threads(4) == 4
    assert bench_recipes.default_threads(40) == 1


@pytest.mark.integration
def test_bench_recipes_trains_and_scores_every_variant(metal_tags: Path, tmp_path: Path) -> None:
    # given a plain YOLO folder of three real captures (the script imports and splits it)
    three = [image for members in list(captures(metal_tags).values())[:3] for image in members]
    data = yolo_folder(metal_tags, tmp_path / "yolo", three)
    # when two variants are trained briefly, the second with two extra hyperparameters
    # and its train labels drawn one way for each tag photographed again, then a real
    # scratch mark pasted into each labelled train photo
    out = tmp_path / "out"
    tried = "scratch+avg2+box=12+mosaic=0+consensus+paste"
    cmd = [sys.executable, "-m", "benchmarks.bench_recipes", "--data", str(data)]
    cmd += ["--variants", f"reference,{tried}", "--epochs", "2", "--imgsz", "160"]
    cmd += ["--batch", "4", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # then both were trained, exported and scored on the same test split
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results] == ["reference", tried]
    assert len({r["images"] for r in results}) == 1 and results[0]["images"] == 4
    assert all(0.0 <= r["map50_95"] <= 1.0 for r in results)
    assert (out / "reference-seed0" / "model.onnx").is_file()
    assert (out / f"{tried}-seed0" / "run" / "weights" / "averaged.pt").is_file()
    runs = ("reference-seed0", f"{tried}-seed0")
    args = [yaml.safe_load((out / run / "run" / "args.yaml").read_text()) for run in runs]
    assert [(a["box"], a["mosaic"], a["flipud"]) for a in args] == [(7.5, 1.0, 0.0), (12, 0, 0.5)]
    assert results[1]["weights"] in {"best.pt", "averaged.pt"}
    assert "relabelled" not in results[0] and results[1]["relabelled"] >= 0
    assert (out / f"{tried}-seed0" / "consensus-data" / "manifest.json").is_file()
    assert "pasted" not in results[0] and results[1]["pasted"] >= 1
    pasted = json.loads((out / f"{tried}-seed0" / "pasted-data" / "manifest.json").read_text())
    assert "scratches pasted into train" in pasted["source"]
    assert "| reference | 1 |" in done.stdout and "| baseline |" in done.stdout
    assert f"| {tried} | 1 |" in done.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_bench_recipes_cross_validates_by_capture(metal_tags: Path, tmp_path: Path) -> None:
    # given a dataset version of three real captures
    data = tmp_path / "v1"
    build_dataset(metal_tags, data, {"train": 1, "val": 1, "test": 1})
    # when two variants (the second with a stride-4 head) run on two of three folds,
    # one epoch each, with their ensemble
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.bench_recipes", "--data", str(data)]
    cmd += ["--variants", "reference,scratch@n-p2", "--folds", "3", "--fold-ids", "0,2"]
    cmd += ["--epochs", "1", "--imgsz", "160", "--batch", "4", "--out", str(out)]
    cmd += ["--ensemble", "reference,scratch@n-p2"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # then each fold was tested on its own capture, the ensemble on the same ones
    results = json.loads((out / "results.json").read_text())
    ensemble = "ensemble(reference,scratch@n-p2)"
    assert [(r["variant"], r["fold"], r["images"]) for r in results] == [
        ("reference", 0, 4),
        ("scratch@n-p2", 0, 4),
        ("reference", 2, 4),
        ("scratch@n-p2", 2, 4),
        (ensemble, 0, 4),
        (ensemble, 2, 4),
    ]
    assert [r.get("model_size") for r in results[:2]] == ["n", "n-p2"]
    assert "[benchmarks.training] scratch@n-p2: 1 epochs" in done.stderr
    assert (out / "reference-seed0-fold2" / "model.onnx").is_file()
    pooled = out / "ensemble-seed0-fold2" / "model.onnx"
    assert onnx_metadata(pooled)["qcloop_members"] == 2
    # the members differ in their anchors (strides 8-32 and 4-32): pooled all the same
    models = [out / f"{v}-seed0-fold2" / "model.onnx" for v in ("reference", "scratch@n-p2")]
    anchors = [
        onnx.load(str(p)).graph.output[0].type.tensor_type.shape.dim[2].dim_value
        for p in [*models, pooled]
    ]
    assert anchors == [525, 525 + 1600, 525 + 2125]
    assert "| reference | 2 |" in done.stdout and f"| {ensemble} | 2 |" in done.stdout
    assert "test splits of folds 0,2 of 3 by capture" in done.stdout
    assert "model size n (but where a variant names its @SIZE)" in done.stdout
    # and a second call with --reuse trains nothing: the runs' figures come back as saved
    (out / "reference-seed0-fold0" / "model.onnx").unlink()  # exported again from weights
    again = subprocess.run(
        [*cmd, "--reuse"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused (--reuse)") == 4 and "] epoch 1/1" not in again.stderr
    assert json.loads((out / "results.json").read_text())[:4] == results[:4]
    assert (out / "reference-seed0-fold0" / "model.onnx").is_file()
    # and with the reference of seed 1 trained on fold 0 by another call, a three-member
    # ensemble names the reference again: its second member is that run, nothing is
    # trained; fold 2, which has no such run, is an error row naming it
    base = cmd[: cmd.index("--variants")]
    more = [*base, "--variants", "reference", "--seeds", "1", "--folds", "3", "--fold-ids", "0"]
    more += ["--epochs", "1", "--imgsz", "160", "--batch", "4", "--out", str(out)]
    done = subprocess.run(more, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    three = [*cmd[: cmd.index("--ensemble")], "--ensemble", "reference,scratch@n-p2,reference"]
    pooled3 = subprocess.run(
        [*three, "--reuse"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert pooled3.returncode == 1 and "] epoch 1/1" not in pooled3.stderr
    rows = json.loads((out / "results.json").read_text())[4:]
    assert [(r["variant"], r["fold"]) for r in rows] == [
        ("ensemble(reference,scratch@n-p2,reference)", 0),
        ("ensemble(reference,scratch@n-p2,reference)", 2),
    ]
    assert rows[0]["images"] == 4 and "error" not in rows[0]
    assert rows[1]["error"] == "the run of reference seed 1 failed or is missing"
    assert onnx_metadata(out / "ensemble-seed0-fold0" / "model.onnx")["qcloop_members"] == 3
    runs = ("reference-seed0", "scratch@n-p2-seed0", "reference-seed1")
    saved = [json.loads((out / f"{run}-fold0" / "result.json").read_text()) for run in runs]
    assert rows[0]["train_s"] == pytest.approx(sum(float(s["train_s"]) for s in saved))


def test_summary_tables_saved_results_of_several_calls_together(tmp_path: Path) -> None:
    def row(variant: str, fold: int, m: float) -> dict[str, object]:
        figures = {"map50": 0.8, "precision": 0.8, "recall": 0.7, "train_s": 100}
        return {"variant": variant, "seed": 0, "fold": fold, "map50_95": m, **figures}

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps([row("reference", 0, 0.50), row("scratch", 0, 0.52)]))
    second.write_text(json.dumps([row("reference", 1, 0.60), row("scratch", 1, 0.63)]))
    script = "benchmarks.bench_recipes"
    done = subprocess.run(
        [sys.executable, "-m", script, "--summary", str(first), str(second)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| reference | 2 | 0.5500 |" in done.stdout
    assert "| +0.0250 | +0.0250 ± 0.0050 (2 pairs) |" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", script, "--summary", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "none.json: cannot read results" in missing.stderr


def test_bench_recipes_refuses_a_bad_variant(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.bench_recipes", "--variants", "fancy"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "recipe 'fancy'" in done.stderr
    cmd = [sys.executable, "-m", "benchmarks.bench_recipes", "--ensemble", "scratch"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--ensemble scratch: name 2 or more of the variants" in (
        done.stderr
    )

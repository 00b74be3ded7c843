"""The recipe benchmark trains, exports and scores each variant on one test split."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components.datasets import captures

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_recipes  # noqa: E402


def test_variants_are_a_recipe_and_an_optional_average() -> None:
    from qcloop.errors import PipelineError

    assert bench_recipes.parse_variant("reference") == ("reference", 0)
    assert bench_recipes.parse_variant("scratch+avg10") == ("scratch", 10)
    with pytest.raises(PipelineError, match="recipe 'mosaic9'"):
        bench_recipes.parse_variant("mosaic9")
    for bad in ("scratch+avg", "scratch+avg1", "scratch+avgx"):
        with pytest.raises(ValueError, match="RECIPE\\+avgK with K > 1"):
            bench_recipes.parse_variant(bad)


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
    table = bench_recipes.summarise(results, ["reference", "scratch+avg10"])
    assert table[2] == (
        "| reference | 2 | 0.5100 | 0.0141 | baseline | 1.0200 | 0.500 | 0.250 | 10 | - |"
    )
    assert table[3].startswith("| scratch+avg10 | 1 | 0.5500 | - | +0.0400 | 1.1000 |")
    assert table[3].endswith("| 0.5300 |")  # its best.pt alone, the ablation of the average
    assert table[4] == "FAILED scratch+avg10 seed 1: PipelineError: NaN loss"


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
    monkeypatch.setattr(bench_recipes.os, "cpu_count", lambda: 16)
    assert bench_recipes.default_workers("0", 6) == 2
    assert bench_recipes.default_workers("0", 1) is None  # the pipeline's own default
    assert bench_recipes.default_workers("0", 40) == 1
    assert bench_recipes.default_workers("cpu", 4) is None  # no loader processes on the CPU


@pytest.mark.integration
def test_bench_recipes_trains_and_scores_every_variant(metal_tags: Path, tmp_path: Path) -> None:
    # given a plain YOLO folder of three real captures (the script imports and splits it)
    data = tmp_path / "yolo"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    shutil.copyfile(metal_tags / "classes.txt", data / "classes.txt")
    for members in list(captures(metal_tags).values())[:3]:
        for image in members:
            shutil.copyfile(image, data / "images" / image.name)
            label = metal_tags / "labels" / f"{image.stem}.txt"
            shutil.copyfile(label, data / "labels" / label.name)
    # when two variants are trained briefly
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_recipes.py"), "--data", str(data)]
    cmd += ["--variants", "reference,scratch+avg2", "--epochs", "2", "--imgsz", "160"]
    cmd += ["--batch", "4", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # then both were trained, exported and scored on the same test split
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results] == ["reference", "scratch+avg2"]
    assert len({r["images"] for r in results}) == 1 and results[0]["images"] == 4
    assert all(0.0 <= r["map50_95"] <= 1.0 for r in results)
    assert (out / "reference-seed0" / "model.onnx").is_file()
    assert (out / "scratch+avg2-seed0" / "run" / "weights" / "averaged.pt").is_file()
    assert results[1]["weights"] in {"best.pt", "averaged.pt"}
    assert "| reference | 1 |" in done.stdout and "| baseline |" in done.stdout
    assert "| scratch+avg2 | 1 |" in done.stdout
    assert not (tmp_path / "runs").exists()


def test_bench_recipes_refuses_a_bad_variant(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_recipes.py"), "--variants", "fancy"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "recipe 'fancy'" in done.stderr

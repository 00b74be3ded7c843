"""Training: one real epoch of YOLOv8n, a recipe's arguments, members at once, the step."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.train import check_losses
from qcloop.errors import PipelineError


def test_nan_loss_is_a_pipeline_error(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text(
        "epoch,  train/box_loss,  train/cls_loss, metrics/mAP50(B)\n"
        "1, 2.5, 3.1, 0.0\n"
        "2, nan, 3.0, 0.0\n"
    )
    with pytest.raises(PipelineError, match="train/box_loss is nan at epoch 2"):
        check_losses(results)
    results.write_text("epoch,train/box_loss\n1,2.5\n")
    check_losses(results)


@pytest.mark.integration
def test_one_epoch_gives_weights_and_leaves_the_dataset_clean(
    tiny_dataset: Path, trained_weights: Path
) -> None:
    assert trained_weights.name == "best.pt" and trained_weights.stat().st_size > 1_000_000
    assert not list(tiny_dataset.rglob("*.cache")), "training must run on a copy"
    assert (trained_weights.parents[1] / "results.csv").is_file()


@pytest.mark.integration
def test_scratch_recipe_trains_on_every_core_and_records_its_hyperparameters(
    tiny_dataset: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    import components.train
    from components.threads import cpu_threads
    from components.train import train_yolo

    caplog.set_level(logging.INFO, logger="components")
    threads_by_epoch: list[int] = []
    report = components.train._report_epoch

    def report_and_count(trainer: Any) -> None:
        report(trainer)
        if trainer.epoch + 1 <= trainer.epochs:  # not the final validation of best.pt
            threads_by_epoch.append(torch.get_num_threads())

    monkeypatch.setattr(components.train, "_report_epoch", report_and_count)
    weights = train_yolo(tiny_dataset, tmp_path, epochs=2, imgsz=160, batch=4, recipe="scratch")
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert (args["flipud"], args["hsv_s"], args["cos_lr"], args["close_mosaic"]) == (
        0.5,
        0.0,
        True,
        20,
    )
    assert weights == tmp_path / "run" / "weights" / "best.pt"
    assert "recipe scratch" in caplog.text
    assert "epoch 2/2: " in caplog.text
    # ultralytics alone trains on one core fewer than the machine has
    assert f"cpu: {cpu_threads()} threads" in caplog.text
    assert threads_by_epoch == [cpu_threads()] * 2


@pytest.mark.integration
def test_members_train_at_once_each_in_its_process(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from components.threads import cpu_threads
    from components.train import train_members

    caplog.set_level(logging.INFO, logger="components")

    def tiny(out: Path, recipes: list[str], seeds: list[int]) -> list[Path]:
        return train_members(
            tiny_dataset, out, recipes, seeds, at_once=2, epochs=1, imgsz=160, batch=4
        )

    # two members at once (as on a GPU; here on the CPU, sharing its cores)
    weights = tiny(tmp_path, ["reference", "reference"], [0, 1])
    assert weights == [tmp_path / f"member-{i}" / "run" / "weights" / "best.pt" for i in (0, 1)]
    assert all(w.is_file() for w in weights)
    seeds = [
        yaml.safe_load((tmp_path / f"member-{i}" / "run" / "args.yaml").read_text())["seed"]
        for i in (0, 1)
    ]
    assert seeds == [0, 1]
    assert "ensemble member 2/2: recipe reference, seed 1 (2 at once)" in caplog.text
    # the members' own records come back from their processes
    share = max(1, cpu_threads() // 2)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(f"cpu: {share} threads") == 2
    assert sum("epoch 1/1: " in m for m in messages) == 2
    # a member that fails fails the whole, named
    with pytest.raises(PipelineError, match=r"ensemble member 2 \(recipe fancy, seed 0\): recipe"):
        tiny(tmp_path / "bad", ["reference", "fancy"], [0, 0])
    with pytest.raises(PipelineError, match="2 recipes but 1 seeds"):
        train_members(tiny_dataset, tmp_path, ["reference", "scratch"], [0], epochs=1, imgsz=160)


def test_threads_below_one_are_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    from components.train import train_yolo

    with pytest.raises(PipelineError, match="threads 0: use 1 or more"):
        train_yolo(tiny_dataset, tmp_path, epochs=1, imgsz=160, threads=0)


@pytest.mark.integration
def test_train_step_writes_the_model_and_its_metadata(tiny_dataset: Path, tmp_path: Path) -> None:
    from components.train import train_step

    # the pipeline's train step outside KFP: one recipe is one .pt
    metadata = train_step(
        tiny_dataset,
        tmp_path / "model.pt",
        recipe="reference",
        seed=3,
        epochs=1,
        imgsz=160,
        batch=4,
    )
    assert (tmp_path / "model.pt").is_file()
    assert metadata == {
        "format": "pt",
        "imgsz": 160,
        "epochs": 1,
        "model_size": "n",
        "recipe": "reference",
        "members": 1,
        "seeds": "3",
        "weights": "best.pt",
    }
    # a bad recipe or size fails before anything trains, naming the choices
    with pytest.raises(PipelineError, match="recipe 'fancy'"):
        train_step(
            tiny_dataset, tmp_path / "x", recipe="reference,fancy", seed=0, epochs=1, imgsz=160
        )
    with pytest.raises(PipelineError, match="model_size 'm'"):
        train_step(tiny_dataset, tmp_path / "x", recipe="reference", seed=0, epochs=1, imgsz=160,
                   model_size="m")  # fmt: skip
    assert not (tmp_path / "x").exists()

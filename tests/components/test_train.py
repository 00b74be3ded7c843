"""Training: data.yaml from the manifest, dataset checks, one real epoch of YOLOv8n."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from components.train import check_losses, copy_dataset, load_manifest, write_data_yaml
from qcloop.contracts import DatasetManifest, count_splits
from qcloop.errors import DatasetError, PipelineError


def _with_splits(manifest: DatasetManifest, mapping: dict[str, str]) -> DatasetManifest:
    """The same manifest with splits renamed (whole groups move together)."""
    images = [
        i.model_copy(update={"split": mapping.get(i.split, i.split)}) for i in manifest.images
    ]
    return manifest.model_copy(update={"images": images, "counts": count_splits(images)})


def test_data_yaml_lists_every_split_with_absolute_paths(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    # given a copy of a dataset with train and test images and an empty val split
    manifest = copy_dataset(tiny_dataset, tmp_path / "data")
    # when
    data_yaml = write_data_yaml(tmp_path / "data", manifest)
    # then
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "scratch"}
    assert Path(data["path"]) == (tmp_path / "data").resolve()
    lists = {s: (tmp_path / "data" / data[s]).read_text().split() for s in ("train", "val", "test")}
    assert len(lists["train"]) == 8 and len(lists["test"]) == 4
    assert lists["val"] == lists["test"], "an empty val split borrows the test images"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in lists["train"])


def test_empty_test_split_borrows_val(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _with_splits(copy_dataset(tiny_dataset, tmp_path / "d"), {"test": "val"})
    data = yaml.safe_load(write_data_yaml(tmp_path / "d", manifest).read_text())
    assert (tmp_path / "d" / data["test"]).read_text() == (tmp_path / "d" / data["val"]).read_text()
    assert "test split is empty, using val" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mapping", "message"),
    [({"train": "val"}, "train split is empty"), ({"test": "train"}, "both empty")],
)
def test_unusable_splits_are_dataset_errors(
    tiny_dataset: Path, tmp_path: Path, mapping: dict[str, str], message: str
) -> None:
    manifest = _with_splits(load_manifest(tiny_dataset), mapping)
    with pytest.raises(DatasetError, match=message):
        write_data_yaml(tmp_path, manifest)


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no manifest.json; materialize"):
        copy_dataset(tmp_path, tmp_path / "copy")


def test_missing_image_is_named(tiny_dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    victim = sorted((broken / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"images/{victim.name}' is listed"):
        copy_dataset(broken, tmp_path / "copy")


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


def test_unknown_recipe_names_the_choices() -> None:
    from components.train import recipe_overrides

    with pytest.raises(PipelineError, match="recipe 'fancy': use one of reference, scratch"):
        recipe_overrides("fancy")
    assert recipe_overrides("reference") == {}
    scratch = recipe_overrides("scratch")
    assert scratch["flipud"] == 0.5 and scratch["hsv_s"] == 0.0
    scratch["flipud"] = 0.0
    assert recipe_overrides("scratch")["flipud"] == 0.5, "callers get a copy"


def test_cli_offers_every_recipe() -> None:
    from components.train import RECIPES
    from pipelines.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--dataset-version", "v1", "--recipe", "scratch", "--average-last", "10"]
    )
    assert (args.recipe, args.average_last) == ("scratch", 10)
    assert (args.tolerance, args.seed) == (0.02, 0)  # the pipeline's defaults
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    (recipe,) = [a for a in train._actions if a.dest == "recipe"]
    assert all(name in recipe.help for name in RECIPES)


def test_recipe_members_name_an_ensemble() -> None:
    from components.train import recipe_members

    assert recipe_members("scratch") == ["scratch"]
    assert recipe_members("reference, scratch") == ["reference", "scratch"]
    with pytest.raises(PipelineError, match="recipe 'fancy': use one of reference, scratch"):
        recipe_members("reference,fancy")
    assert recipe_members("scratch,scratch") == ["scratch", "scratch"]
    with pytest.raises(PipelineError, match="'reference,': an empty member"):
        recipe_members("reference,")


def test_a_repeated_recipe_trains_with_the_next_seed() -> None:
    from components.train import member_seeds

    assert member_seeds(["reference"], 7) == [7]
    assert member_seeds(["reference", "scratch"], 0) == [0, 0]
    assert member_seeds(["reference", "scratch", "reference", "scratch", "reference"], 3) == [
        3,
        3,
        4,
        4,
        5,
    ]


class _Ema:
    def __init__(self, module: object) -> None:
        self.ema = module


class _Trainer:
    """What ``EmaWindow`` reads of an ultralytics trainer."""

    def __init__(self, module: object, epochs: int) -> None:
        self.ema = _Ema(module)
        self.epochs = epochs
        self.epoch = 0


def test_ema_window_keeps_the_last_epochs_only(tmp_path: Path) -> None:
    import torch

    from components.train import EmaWindow

    layer = torch.nn.Linear(2, 1)
    trainer = _Trainer(layer, epochs=5)
    window = EmaWindow(tmp_path / "window", 3)
    for epoch in range(5):
        trainer.epoch = epoch
        with torch.no_grad():
            layer.bias.fill_(float(epoch))
        window.on_fit_epoch_end(trainer)
    trainer.epoch = 5  # ultralytics' final validation of best.pt fires the callback again
    window.on_fit_epoch_end(trainer)
    names = sorted(p.name for p in (tmp_path / "window").iterdir())
    assert names == ["epoch-0003.pt", "epoch-0004.pt", "epoch-0005.pt"]
    assert [p.name for p in window.files] == names
    saved = torch.load(window.files[0], weights_only=True)
    assert float(saved["bias"]) == 2.0, "a copy of that epoch's weights, not a live reference"


def test_average_checkpoints_is_the_mean_of_the_states(
    trained_weights: Path, tmp_path: Path
) -> None:
    import torch

    from components.train import average_checkpoints

    model = torch.load(trained_weights, map_location="cpu", weights_only=False)["model"].float()
    base = model.state_dict()
    states = []
    for i, shift in enumerate((0.0, 0.5, 1.0)):
        state = {k: (v + shift if v.is_floating_point() else v + i) for k, v in base.items()}
        states.append(tmp_path / f"epoch-{i:04d}.pt")
        torch.save(state, states[-1])
    out = average_checkpoints(trained_weights, states, tmp_path / "averaged.pt")
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    averaged = ckpt["model"].float().state_dict()
    assert ckpt["averaged_epochs"] == ["epoch-0000", "epoch-0001", "epoch-0002"]
    for key, value in base.items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged[key], value + 0.5, atol=2e-2, rtol=2e-3)
        else:
            assert torch.equal(averaged[key], value + 2), "counters come from the last state"
    # and the averaged checkpoint is a model ultralytics can load and run
    from ultralytics import YOLO

    YOLO(str(out)).predict(np.zeros((160, 160, 3), dtype=np.uint8), imgsz=160, verbose=False)


def test_states_of_another_model_are_refused(trained_weights: Path, tmp_path: Path) -> None:
    import torch

    from components.train import average_checkpoints

    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "epoch-0001.pt")
    with pytest.raises(PipelineError, match="do not fit the model of"):
        average_checkpoints(trained_weights, [tmp_path / "epoch-0001.pt"], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.integration
def test_pick_on_val_scores_both_on_val_and_a_tie_keeps_the_average(
    tiny_dataset: Path, trained_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.train import pick_on_val

    monkeypatch.chdir(tmp_path)

    data_yaml = write_data_yaml(tmp_path / "data", copy_dataset(tiny_dataset, tmp_path / "data"))
    same = tmp_path / "same.pt"
    shutil.copyfile(trained_weights, same)
    assert pick_on_val(trained_weights, same, data_yaml, imgsz=160, batch=4, device="cpu") == same
    assert not (tmp_path / "runs").exists(), "ultralytics' val must not write into the cwd"


@pytest.mark.parametrize(
    ("best", "averaged", "chosen"), [(0.40, 0.42, "avg"), (0.40, 0.39, "best")]
)
def test_pick_on_val_keeps_the_average_only_when_not_worse(
    monkeypatch: pytest.MonkeyPatch, best: float, averaged: float, chosen: str
) -> None:
    import components.train as train

    scores = {Path("best.pt"): best, Path("avg.pt"): averaged}
    seen: list[tuple[Path, str]] = []

    def fake_val(weights: Path, data_yaml: Path, **kw: object) -> float:
        seen.append((weights, str(data_yaml)))
        return scores[weights]

    monkeypatch.setattr(train, "val_map50_95", fake_val)
    picked = train.pick_on_val(
        Path("best.pt"), Path("avg.pt"), Path("d.yaml"), imgsz=160, batch=4, device="cpu"
    )
    assert picked == Path(f"{chosen}.pt")
    assert sorted(seen) == [(Path("avg.pt"), "d.yaml"), (Path("best.pt"), "d.yaml")]


@pytest.mark.integration
def test_scratch_recipe_with_averaging_trains_and_records_its_hyperparameters(
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    import components.train
    from components.train import cpu_threads, train_yolo

    threads_by_epoch: list[int] = []
    report = components.train._report_epoch

    def report_and_count(trainer: Any) -> None:
        report(trainer)
        if trainer.epoch + 1 <= trainer.epochs:  # not the final validation of best.pt
            threads_by_epoch.append(torch.get_num_threads())

    monkeypatch.setattr(components.train, "_report_epoch", report_and_count)
    weights = train_yolo(
        tiny_dataset, tmp_path, epochs=2, imgsz=160, batch=4, recipe="scratch", average_last=2
    )
    args = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert (args["flipud"], args["hsv_s"], args["cos_lr"], args["close_mosaic"]) == (
        0.5,
        0.0,
        True,
        20,
    )
    assert weights.name in {"best.pt", "averaged.pt"}
    averaged = tmp_path / "run" / "weights" / "averaged.pt"
    assert averaged.is_file()
    assert sorted(p.name for p in (tmp_path / "ema-window").iterdir()) == [
        "epoch-0001.pt",
        "epoch-0002.pt",
    ]
    out = capsys.readouterr().out
    assert "recipe scratch, averaging the last 2 epochs" in out
    # ultralytics alone trains on one core fewer than the machine has
    assert f"[train] cpu: {cpu_threads()} threads" in out
    assert threads_by_epoch == [cpu_threads()] * 2
    assert f"-> {weights.name}" in out


@pytest.mark.integration
def test_members_train_at_once_each_in_its_process(
    tiny_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from components.train import cpu_threads, train_members

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
    out = capfd.readouterr().out
    assert "[train] ensemble member 2/2: recipe reference, seed 1 (2 at once)" in out
    share = max(1, cpu_threads() // 2)
    assert out.count(f"[train] cpu: {share} threads") == 2  # printed by each process
    # a member that fails fails the whole, named
    with pytest.raises(PipelineError, match=r"ensemble member 2 \(recipe fancy, seed 0\): recipe"):
        tiny(tmp_path / "bad", ["reference", "fancy"], [0, 0])
    with pytest.raises(PipelineError, match="2 recipes but 1 seeds"):
        train_members(tiny_dataset, tmp_path, ["reference", "scratch"], [0], epochs=1, imgsz=160)


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [
        ("max 100000\n", None),  # no quota: the affinity
        ("200000 100000\n", 2),  # a Kubernetes limit of 2 CPUs
        ("150000 100000\n", 1),  # 1.5 CPUs rounds down
        ("20000 100000\n", 1),  # at least one thread
        (None, None),  # no cgroup v2 file: the affinity
        ("garbage\n", None),
    ],
)
def test_cpu_threads_is_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str | None, cap: int | None
) -> None:
    from components.train import cpu_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert cpu_threads(path) == (8 if cap is None else cap)


def test_threads_below_one_are_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    from components.train import train_yolo

    with pytest.raises(PipelineError, match="threads 0: use 1 or more"):
        train_yolo(tiny_dataset, tmp_path, epochs=1, imgsz=160, threads=0)


def test_loader_workers_only_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.train import loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert (loader_workers("cpu"), loader_workers("CPU"), loader_workers("")) == (0, 0, 0)
    assert loader_workers("0") == loader_workers("cuda:0") == loader_workers("0,1") == 8
    assert (loader_workers("0", 6), loader_workers("0", 40), loader_workers("cpu", 2)) == (2, 1, 0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers("0") == 2


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

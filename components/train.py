"""Train YOLOv8 (ultralytics) on a qcloop dataset version: one model, an ensemble's
members, and the pipeline's train step.

A training is built from small pieces that benchmarks reuse too: ``prepare_data``
(a private copy of the dataset and its ``data.yaml``), ``new_model`` (the model with
qcloop's callbacks) and ``fit`` (ultralytics' training, its losses checked).
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from components.data import copy_dataset, write_data_yaml
from components.recipes import member_seeds, model_config, recipe_members, recipe_overrides
from components.threads import cpu_threads, loader_workers, shared_cpu_threads, use_cpu_threads
from qcloop.errors import PipelineError
from qcloop.params import DEFAULTS
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)


def prepare_data(dataset_dir: Path, out_dir: Path) -> Path:
    """Copy dataset folder ``dataset_dir`` to ``out_dir/data`` and return its ``data.yaml``
    (ultralytics offline from here on)."""
    configure_offline()
    log.info("copying dataset %s -> %s", dataset_dir, out_dir / "data")
    manifest = copy_dataset(Path(dataset_dir), out_dir / "data")
    return write_data_yaml(out_dir / "data", manifest)


def new_model(model_cfg: str, *, threads: int | None = None) -> Any:
    """An untrained ultralytics ``YOLO`` from ``model_cfg`` that logs one line per epoch
    and trains on ``threads`` torch threads on the CPU (default: ``cpu_threads``)."""
    if threads is not None and threads < 1:
        raise PipelineError(f"threads {threads}: use 1 or more, or leave it out for every core")
    configure_offline()
    from ultralytics import YOLO

    model = YOLO(model_cfg)
    model.add_callback("on_fit_epoch_end", _report_epoch)
    model.add_callback(
        "on_pretrain_routine_start",
        partial(use_cpu_threads, threads=cpu_threads() if threads is None else threads),
    )
    return model


def fit(
    model: Any,
    data_yaml: Path,
    out_dir: Path,
    *,
    overrides: dict[str, Any],
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    seed: int,
    workers: int,
    patience: int,
) -> Path:
    """Train ``model`` on ``data_yaml`` into ``out_dir/run`` with ultralytics arguments
    ``overrides`` (a recipe's) and return ``best.pt``.

    ``PipelineError`` if a loss turned NaN or no weights were written.
    """
    model.train(
        **overrides,
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        deterministic=True,
        workers=workers,
        patience=patience,
        project=str(out_dir),
        name="run",
        exist_ok=True,
        plots=False,
    )
    run_dir = out_dir / "run"
    check_losses(run_dir / "results.csv")
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise PipelineError(f"training wrote no {best}; read the training log above")
    log.info("best weights: %s", best)
    return best


def train_yolo(
    dataset_dir: Path,
    out_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int = DEFAULTS.batch,
    model_cfg: str = "yolov8n.yaml",
    device: str = DEFAULTS.device,
    seed: int = DEFAULTS.seed,
    workers: int | None = None,
    patience: int = DEFAULTS.patience,
    recipe: str = DEFAULTS.recipe,
    threads: int | None = None,
) -> Path:
    """Train a detector from ``model_cfg`` (no pretrained weights) and return ``best.pt``.

    ``recipe`` names the training hyperparameters (``components.recipes.RECIPES``).
    ``workers`` (data-loading processes) defaults to ``loader_workers(device)``. On the
    CPU it trains on ``threads`` torch threads, by default every core it may use
    (``cpu_threads``). Raises ``PipelineError`` if a loss turned NaN or no weights
    were written.
    """
    overrides = recipe_overrides(recipe)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_yaml = prepare_data(Path(dataset_dir), out_dir)
    model = new_model(model_cfg, threads=threads)
    log.info(
        "%s: %d epochs, imgsz %d, batch %d, %s, recipe %s",
        model_cfg,
        epochs,
        imgsz,
        batch,
        device,
        recipe,
    )
    return fit(
        model,
        data_yaml,
        out_dir,
        overrides=overrides,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        workers=loader_workers(device) if workers is None else workers,
        patience=patience,
    )


def train_members(
    dataset_dir: Path,
    out_dir: Path,
    recipes: list[str],
    seeds: list[int],
    *,
    at_once: int = 1,
    **options: Any,
) -> list[Path]:
    """Train one model per recipe, with its seed, under ``out_dir/member-K``: the weights
    of each, in order (``train_yolo``'s ``options`` for all).

    ``at_once`` > 1 trains that many at once, each in a process of its own, sharing the
    loader processes (on a GPU) or the cores (on the CPU) among them: on one GPU several
    small models train in little more than the time of one (docs/performance.md). A
    member that fails (a NaN loss, ...) fails the whole with ``PipelineError`` naming it.
    """
    if len(recipes) != len(seeds):
        raise PipelineError(f"{len(recipes)} recipes but {len(seeds)} seeds")
    members = [
        (out_dir / f"member-{index}", dict(options, recipe=recipe, seed=seed))
        for index, (recipe, seed) in enumerate(zip(recipes, seeds, strict=True))
    ]
    at_once = max(1, min(at_once, len(members)))
    if at_once == 1:
        weights = []
        for index, (out, job) in enumerate(members):
            _announce(index, len(members), job, at_once)
            weights.append(train_yolo(dataset_dir, out, **job))
        return weights
    for index, (_, job) in enumerate(members):
        _announce(index, len(members), job, at_once)
    shared = {
        "workers": loader_workers(str(options.get("device", "cpu")), at_once),
        "threads": shared_cpu_threads(at_once),
    }
    return _train_in_processes(dataset_dir, [(out, {**shared, **job}) for out, job in members])


def _announce(index: int, count: int, job: dict[str, Any], at_once: int) -> None:
    if count > 1:
        log.info(
            "ensemble member %d/%d: recipe %s, seed %s%s",
            index + 1,
            count,
            job["recipe"],
            job["seed"],
            f" ({at_once} at once)" if at_once > 1 else "",
        )


def _train_in_processes(
    dataset_dir: Path, members: list[tuple[Path, dict[str, Any]]]
) -> list[Path]:
    """``train_yolo`` of every member at once, each in a process of its own; the weights in
    order, or ``PipelineError`` naming the first member that failed."""
    from components.parallel import CallFailed, run_at_once

    try:
        return run_at_once(train_yolo, [((dataset_dir, out), job) for out, job in members])
    except CallFailed as failed:
        job = members[failed.index][1]
        raise PipelineError(
            f"ensemble member {failed.index + 1} (recipe {job['recipe']}, seed {job['seed']}): "
            f"{failed.__cause__}"
        ) from failed.__cause__


def check_device(device: str, gpu_limit: int) -> None:
    """``PipelineError`` for a GPU ``device`` in a pod that asked for no GPU (``gpu_limit``)."""
    if device != "cpu" and gpu_limit < 1:
        raise PipelineError(
            f"device={device} trains on a GPU, but the step's pod asked for none "
            "(gpu_limit=0): run with gpu_limit=1 (and the node_selector/tolerations of your "
            "GPU nodes), or with device=cpu"
        )


def train_step(
    dataset_dir: Path,
    model_path: Path,
    *,
    recipe: str,
    seed: int,
    epochs: int,
    imgsz: int,
    model_size: str = DEFAULTS.model_size,
    device: str = DEFAULTS.device,
    **options: Any,
) -> dict[str, Any]:
    """The pipeline's train step, outside KFP: the members of ``recipe`` (``recipe_members``,
    each with its seed from ``seed``: ``member_seeds``) trained by ``train_members``, all at
    once on a GPU and one after the other on the CPU, written to ``model_path``: the
    ``best.pt`` for one recipe, a folder of ``member-K.pt`` for several (which the
    export step pools into one ONNX graph). Returns the model's metadata. ``options`` are
    ``train_yolo``'s (batch, patience).
    """
    import tempfile

    from components.ensemble import member_file

    members = recipe_members(recipe)
    seeds = member_seeds(members, seed)
    model_cfg = model_config(model_size)
    model_path = Path(model_path)
    with tempfile.TemporaryDirectory(prefix="qcloop-train-") as tmp:
        weights = train_members(
            Path(dataset_dir),
            Path(tmp),
            members,
            seeds,
            at_once=len(members) if loader_workers(device) else 1,  # all at once on a GPU
            epochs=epochs,
            imgsz=imgsz,
            device=device,
            model_cfg=model_cfg,
            **options,
        )
        if len(members) == 1:
            shutil.copyfile(weights[0], model_path)
        else:
            model_path.mkdir(parents=True, exist_ok=True)
            for index, best in enumerate(weights):
                shutil.copyfile(best, member_file(model_path, index))
        chosen = [best.name for best in weights]
    return {
        "format": "pt" if len(members) == 1 else "pt-ensemble",
        "imgsz": imgsz,
        "epochs": epochs,
        "model_size": model_size,
        "recipe": recipe,
        "members": len(members),
        "seeds": ",".join(map(str, seeds)),
        "weights": ",".join(chosen),
    }


def _report_epoch(trainer: Any) -> None:
    """One progress line per epoch (ultralytics itself runs quiet)."""
    if trainer.epoch + 1 > trainer.epochs:  # the final validation of best.pt fires it once more
        return
    items = trainer.label_loss_items(trainer.tloss, prefix="train")
    losses = " ".join(f"{name.split('/')[-1]} {float(value):.3f}" for name, value in items.items())
    fitness = trainer.metrics.get("metrics/mAP50-95(B)", float("nan"))
    log.info(
        "epoch %d/%d: %s, val mAP50-95 %.3f", trainer.epoch + 1, trainer.epochs, losses, fitness
    )


def check_losses(results_csv: Path) -> None:
    """Raise ``PipelineError`` if any loss in ultralytics' ``results.csv`` is NaN/inf."""
    if not results_csv.is_file():
        raise PipelineError(f"training wrote no {results_csv}; read the training log above")
    with open(results_csv, newline="") as fh:
        for epoch, row in enumerate(csv.DictReader(fh), start=1):
            for key, value in row.items():
                if "loss" in key and not math.isfinite(float(value)):
                    raise PipelineError(
                        f"{results_csv}: {key.strip()} is {value.strip()} at epoch {epoch}; "
                        "lower the learning rate or check the labels for broken boxes"
                    )

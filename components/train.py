"""Train YOLOv8 (ultralytics) on a qcloop dataset version.

Ultralytics writes ``*.cache`` files beside the labels, so training always runs
on a copy of the dataset folder (``copy_dataset``), never on the DVC checkout.
``write_data_yaml`` turns the manifest's splits into the ``data.yaml`` and the
per-split image lists that ultralytics reads.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from components.yolo_env import configure_offline
from qcloop.contracts import DatasetManifest
from qcloop.errors import DatasetError, PipelineError
from qcloop.settings import Settings

MANIFEST = "manifest.json"


def materialize_version(settings: Settings, version: str, dest: Path) -> DatasetManifest:
    """Copy dataset ``version`` into ``dest`` (new folder) with the step's settings."""
    from qcloop.dataset import materialize

    print(f"[data] materialising dataset {version} into {dest}")
    return materialize(settings, version, Path(dest))


def load_manifest(dataset_dir: Path) -> DatasetManifest:
    """Read ``manifest.json`` of a dataset folder; ``DatasetError`` if it is missing."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{dataset_dir}: no {MANIFEST}; materialize a dataset version into this folder "
            "first (qcloop.dataset.materialize)"
        )
    return DatasetManifest.load(path)


def copy_dataset(dataset_dir: Path, dest: Path) -> DatasetManifest:
    """Copy a dataset folder to ``dest`` (without caches) and check every listed file."""
    manifest = load_manifest(dataset_dir)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(dataset_dir, dest, ignore=shutil.ignore_patterns("*.cache", ".*"))
    for img in manifest.images:
        _check_pair(dest, img.file, img.label_file)
    return manifest


def _check_pair(root: Path, image: str, label: str) -> None:
    expected = _label_for(image)
    if label != expected:
        raise DatasetError(
            f"{root / MANIFEST}: label_file '{label}' of '{image}' must be '{expected}' "
            "(ultralytics finds labels by replacing images/ with labels/)"
        )
    for rel in (image, label):
        if not (root / rel).is_file():
            raise DatasetError(f"{root}: '{rel}' is listed in {MANIFEST} but missing")


def _label_for(image: str) -> str:
    head, sep, tail = image.rpartition("images/")
    if not sep:
        return "<an images/ path>"
    return head + "labels/" + tail.rsplit(".", 1)[0] + ".txt"


def split_lists(root: Path, manifest: DatasetManifest) -> dict[str, list[str]]:
    """Absolute image paths of each split (``train``, ``val``, ``test``)."""
    root = Path(root).resolve()
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for img in manifest.images:
        lists[img.split].append(str(root / img.file))
    return lists


def write_data_yaml(root: Path, manifest: DatasetManifest, *, for_training: bool = True) -> Path:
    """Write ``<split>.txt`` image lists and ``data.yaml`` into ``root``; return the yaml.

    An empty val split borrows the test images, an empty test split the val
    images (said on stdout); an empty train split (when ``for_training``), or no
    val and no test images, is a ``DatasetError``.
    """
    root = Path(root).resolve()
    lists = split_lists(root, manifest)
    if not lists["train"] and not for_training:
        lists["train"] = lists["test"] or lists["val"]  # ultralytics wants the key; never read
    if not lists["train"]:
        raise DatasetError(
            f"dataset {manifest.version} at {root}: the train split is empty; "
            "add labelled images before training"
        )
    if not lists["val"] and not lists["test"]:
        raise DatasetError(
            f"dataset {manifest.version} at {root}: val and test splits are both empty; "
            "add images of other captures so that something can be evaluated"
        )
    for split, other in (("val", "test"), ("test", "val")):
        if not lists[split]:
            print(f"[data] {manifest.version}: {split} split is empty, using {other} as {split}")
            lists[split] = lists[other]
    for split, paths in lists.items():
        (root / f"{split}.txt").write_text("".join(p + "\n" for p in paths))
    data = {
        "path": str(root),
        "train": "train.txt",
        "val": "val.txt",
        "test": "test.txt",
        "names": dict(enumerate(manifest.class_names)),
    }
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


# Training hyperparameters (ultralytics ``train`` arguments) by name. "reference" is
# ultralytics' defaults, the plain recipe of issue #4. "scratch" is tuned to the metal
# tags: grayscale photos (hue/saturation jitter only adds noise), scratches that have
# no up or down (vertical flips double the poses), a cosine schedule that ends at a
# low rate, and the last 20 epochs without mosaic so the model settles on whole,
# unscaled tags as the camera sees them. "paste" is the reference with one real scratch
# mark from the train labels pasted into every labelled train photo each time it is
# loaded (components/paste.py: an augmentation for thin, low-contrast scratches); its
# "paste" key is qcloop's own (marks per photo), not an ultralytics argument.
RECIPES: dict[str, dict[str, Any]] = {
    "reference": {},
    "scratch": {
        "hsv_h": 0.0,
        "hsv_s": 0.0,
        "hsv_v": 0.5,
        "flipud": 0.5,
        "fliplr": 0.5,
        "cos_lr": True,
        "close_mosaic": 20,
    },
    "paste": {"paste": 1},
}


def recipe_overrides(recipe: str) -> dict[str, Any]:
    """The ultralytics arguments of a named recipe, or ``PipelineError`` naming the choices."""
    if recipe not in RECIPES:
        raise PipelineError(
            f"recipe {recipe!r}: use one of {', '.join(RECIPES)} "
            "(components/train.py RECIPES lists their hyperparameters)"
        )
    return dict(RECIPES[recipe])


# The ultralytics arguments train_yolo sets itself: an extra hyperparameter may not
# replace them (``hyper_overrides``).
_SET_BY_TRAIN = frozenset(
    "data epochs imgsz batch device seed deterministic workers patience save_period "
    "project name exist_ok plots model resume mode task".split()
)


def hyper_overrides(hyper: dict[str, Any]) -> dict[str, Any]:
    """``hyper`` checked as extra ultralytics training arguments (``{"box": 12.0}``) to
    try on top of a recipe, e.g. in scripts/bench_recipes.py; ``PipelineError`` for a key
    ultralytics does not know or one that train_yolo sets itself."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    for key in hyper:
        if key in _SET_BY_TRAIN:
            raise PipelineError(
                f"hyperparameter {key!r} is set by the training step itself; "
                "use its own option (epochs, imgsz, batch, seed, ...)"
            )
        if key not in DEFAULT_CFG_DICT:
            raise PipelineError(
                f"hyperparameter {key!r}: not an ultralytics training argument "
                "(see ultralytics/cfg/default.yaml, e.g. box, scale, mosaic, lr0)"
            )
    return dict(hyper)


def recipe_members(recipe: str) -> list[str]:
    """The recipes of ``recipe``: one name, or ``"reference,scratch"`` for an ensemble.

    Each member of an ensemble is trained with its own recipe and the members are
    pooled into one ONNX graph (components/ensemble.py). A recipe may come again
    (``reference,scratch,reference``): each time it does, it trains with the next seed
    (``member_seeds``), so it is another model, not the same one twice.
    ``PipelineError`` for an unknown name or an empty member.
    """
    members = [part.strip() for part in str(recipe).split(",")]
    if not all(members):
        raise PipelineError(
            f"recipe {recipe!r}: an empty member; write one recipe, or several joined by "
            "commas for an ensemble (e.g. reference,scratch)"
        )
    for member in members:
        recipe_overrides(member)
    return members


def member_seeds(members: list[str], seed: int) -> list[int]:
    """The training seed of each member: ``seed``, plus one for each earlier member of the
    same recipe (``reference,scratch,reference`` -> seed, seed, seed + 1)."""
    return [seed + members[:index].count(member) for index, member in enumerate(members)]


class EmaWindow:
    """Keep the EMA weights of the last ``size`` epochs on disk (a training callback).

    Files are float32 state dicts ``epoch-NNNN.pt`` in ``folder``; older ones are
    deleted as new ones come, so at most ``size`` exist. Early stopping ends the
    window wherever training ends.
    """

    def __init__(self, folder: Path, size: int) -> None:
        self.folder = Path(folder)
        self.size = size
        self.files: list[Path] = []
        self.folder.mkdir(parents=True, exist_ok=True)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if trainer.epoch + 1 > trainer.epochs or trainer.ema is None:  # final validation
            return
        import torch

        ema = trainer.ema.ema.state_dict()
        state = {k: v.detach().cpu().clone() for k, v in ema.items()}
        path = self.folder / f"epoch-{trainer.epoch + 1:04d}.pt"
        torch.save(state, path)
        self.files.append(path)
        while len(self.files) > self.size:
            self.files.pop(0).unlink(missing_ok=True)


def average_checkpoints(template: Path, states: list[Path], out: Path) -> Path:
    """Write ``out``: checkpoint ``template`` with its model's weights the mean of ``states``.

    Float tensors (weights, BatchNorm statistics) are averaged; integer ones
    (``num_batches_tracked``) come from the last state. ``PipelineError`` if the
    states do not fit the template's model.
    """
    import torch

    if not states:
        raise PipelineError("average_checkpoints: no states to average")
    mean: dict[str, Any] = {}
    for path in states:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in state.items():
            if value.is_floating_point():
                mean[key] = mean.get(key, 0) + value.double() / len(states)
            else:
                mean[key] = value
    ckpt = torch.load(template, map_location="cpu", weights_only=False)
    model = ckpt["model"].float()
    own = model.state_dict()
    if set(own) != set(mean):
        raise PipelineError(
            f"average_checkpoints: the states in {states[0].parent} do not fit the model of "
            f"{template} ({len(set(own) ^ set(mean))} keys differ)"
        )
    model.load_state_dict({k: mean[k].to(own[k].dtype) for k in own})
    ckpt["model"] = model.half()
    ckpt["averaged_epochs"] = [p.stem for p in states]
    torch.save(ckpt, out)
    print(f"[train] averaged the EMA weights of {len(states)} epochs -> {out}")
    return out


def val_map50_95(weights: Path, data_yaml: Path, *, imgsz: int, batch: int, device: str) -> float:
    """mAP50-95 of ``weights`` on the val split of ``data_yaml`` (ultralytics ``val``)."""
    import tempfile

    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="qcloop-val-") as tmp:  # not ./runs
        metrics = YOLO(str(weights)).val(
            data=str(data_yaml),
            split="val",
            imgsz=imgsz,
            batch=batch,
            device=device,
            plots=False,
            verbose=False,
            workers=0,
            project=tmp,
            name="val",
        )
    return float(metrics.box.map)


def pick_on_val(
    best: Path, averaged: Path, data_yaml: Path, *, imgsz: int, batch: int, device: str
) -> Path:
    """The averaged weights if they score at least as well as ``best`` on val, else ``best``.

    The val split decides, as it chose ``best.pt`` (the test split only where val is
    empty and borrows it, see ``write_data_yaml``), so the test score stays unseen.
    """
    scores = {
        path: val_map50_95(path, data_yaml, imgsz=imgsz, batch=batch, device=device)
        for path in (best, averaged)
    }
    chosen = averaged if scores[averaged] >= scores[best] else best
    print(
        f"[train] val mAP50-95: best.pt {scores[best]:.4f}, averaged {scores[averaged]:.4f} "
        f"-> {chosen.name}"
    )
    return chosen


def loader_workers(device: str, parallel: int = 1) -> int:
    """Data-loading processes for a training device: none on the CPU, up to 8 on GPUs,
    and with ``parallel`` trainings at once each one's share of the cores (at least 1).

    On the CPU the augmentation would take cores from the training itself; on a GPU
    the main process alone cannot feed it mosaics fast enough.
    """
    if str(device).strip().lower() in ("cpu", ""):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // parallel))


def cpu_threads(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    A Kubernetes CPU limit is such a quota (``cpu.max`` "200000 100000" is 2 CPUs);
    a fractional one rounds down, to at least 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def shared_cpu_threads(parallel: int) -> int:
    """Torch threads of each of ``parallel`` CPU trainings at once: its share of
    ``cpu_threads``, at least 1."""
    return max(1, cpu_threads() // parallel)


def use_cpu_threads(trainer: Any, threads: int) -> None:
    """Training callback (``on_pretrain_routine_start``): CPU training on ``threads`` threads.

    Ultralytics trains on the CPU with one core fewer than the machine has, kept for
    data-loading processes, yet on the CPU it loads the data in the training process
    itself (workers 0): on a 2-core box training ran on one core
    (docs/benchmarks.md "Training threads on the CPU").
    """
    if trainer.device.type != "cpu":
        return
    import torch

    torch.set_num_threads(threads)
    print(f"[train] cpu: {threads} threads", flush=True)


# YOLOv8n / YOLOv8s, from their yaml (no pretrained weights); "-p2": the same with a
# fourth, stride-4 output (ultralytics' yolov8-p2.yaml) for small objects: 4x the
# anchors of stride 8, ~2.5x the CPU latency of YOLOv8n at the same input size
MODEL_SIZES = ("n", "s", "n-p2", "s-p2")


def model_config(size: str) -> str:
    """``yolov8<size>.yaml`` for a model size, or ``PipelineError`` naming the choices."""
    if size not in MODEL_SIZES:
        raise PipelineError(
            f"model_size {size!r}: use one of {', '.join(MODEL_SIZES)} "
            "(YOLOv8n or YOLOv8s, trained from their yaml; -p2 adds a stride-4 head "
            "for small objects)"
        )
    return f"yolov8{size}.yaml"


def train_yolo(
    dataset_dir: Path,
    out_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int = 16,
    model_cfg: str = "yolov8n.yaml",
    device: str = "cpu",
    seed: int = 0,
    workers: int | None = None,
    patience: int = 50,
    recipe: str = "reference",
    average_last: int = 0,
    threads: int | None = None,
    save_period: int = -1,
    hyper: dict[str, Any] | None = None,
) -> Path:
    """Train a detector from ``model_cfg`` (no pretrained weights) and return the weights.

    ``recipe`` names the training hyperparameters (``RECIPES``). ``workers``
    (data-loading processes) defaults to ``loader_workers(device)``. With
    ``average_last`` K > 1 the EMA weights of the last K epochs are averaged
    (``average_checkpoints``); the averaged model is returned when it scores at
    least as well as ``best.pt`` on the val split, else ``best.pt``. On the CPU it
    trains on ``threads`` torch threads, by default every core it may use
    (``cpu_threads``). ``save_period`` N > 0 also keeps the EMA weights of every Nth
    epoch (``run/weights/epochK.pt``, K counted from 0; for scripts/bench_snapshots.py).
    ``hyper`` adds ultralytics training arguments over the recipe's (``hyper_overrides``;
    for trying a candidate in scripts/bench_recipes.py before it becomes a recipe).
    Raises ``PipelineError`` if a loss turned NaN or no weights were written.
    """
    overrides = {**recipe_overrides(recipe), **hyper_overrides(hyper or {})}
    paste = int(overrides.pop("paste", 0))
    if average_last < 0:
        raise PipelineError(f"average_last {average_last}: use 0 (off) or the number of epochs")
    if threads is not None and threads < 1:
        raise PipelineError(f"threads {threads}: use 1 or more, or leave it out for every core")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_offline()
    print(f"[train] copying dataset {dataset_dir} -> {out_dir / 'data'}")
    manifest = copy_dataset(Path(dataset_dir), out_dir / "data")
    data_yaml = write_data_yaml(out_dir / "data", manifest)
    from ultralytics import YOLO

    print(
        f"[train] {model_cfg}: {epochs} epochs, imgsz {imgsz}, batch {batch}, {device}, "
        f"recipe {recipe}"
        + "".join(f", {key}={value}" for key, value in (hyper or {}).items())
        + (f", averaging the last {average_last} epochs" if average_last > 1 else "")
    )
    model = YOLO(model_cfg)
    model.add_callback("on_fit_epoch_end", _report_epoch)
    model.add_callback(
        "on_pretrain_routine_start",
        partial(use_cpu_threads, threads=cpu_threads() if threads is None else threads),
    )
    window = EmaWindow(out_dir / "ema-window", average_last) if average_last > 1 else None
    if window is not None:
        model.add_callback("on_fit_epoch_end", window.on_fit_epoch_end)
    if paste > 0:
        from components.paste import use_paste

        model.add_callback("on_pretrain_routine_start", partial(use_paste, count=paste))
    model.train(
        **overrides,
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        deterministic=True,
        workers=loader_workers(device) if workers is None else workers,
        patience=patience,
        save_period=save_period,
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
    print(f"[train] best weights: {best}")
    if window is None or len(window.files) < 2:
        return best
    averaged = average_checkpoints(best, window.files, run_dir / "weights" / "averaged.pt")
    return pick_on_val(best, averaged, data_yaml, imgsz=imgsz, batch=batch, device=device)


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
    small models train in little more than the time of one (docs/benchmarks.md). A
    member that fails (a NaN loss, ...) fails the whole with ``PipelineError`` naming it.
    """
    if len(recipes) != len(seeds):
        raise PipelineError(f"{len(recipes)} recipes but {len(seeds)} seeds")
    members = [
        (out_dir / f"member-{index}", dict(options, recipe=recipe, seed=seed))
        for index, (recipe, seed) in enumerate(zip(recipes, seeds, strict=True))
    ]
    at_once = max(1, min(at_once, len(members)))

    def announce(index: int, job: dict[str, Any]) -> None:
        if len(members) > 1:
            print(
                f"[train] ensemble member {index + 1}/{len(members)}: recipe {job['recipe']}, "
                f"seed {job['seed']}" + (f" ({at_once} at once)" if at_once > 1 else ""),
                flush=True,
            )

    if at_once == 1:
        weights = []
        for index, (out, job) in enumerate(members):
            announce(index, job)
            weights.append(train_yolo(dataset_dir, out, **job))
        return weights
    for index, (_, job) in enumerate(members):
        announce(index, job)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    shared = {
        "workers": loader_workers(str(options.get("device", "cpu")), at_once),
        "threads": shared_cpu_threads(at_once),
    }
    with ProcessPoolExecutor(max_workers=at_once, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(train_yolo, dataset_dir, out, **{**shared, **job}) for out, job in members
        ]
        weights = []
        for index, future in enumerate(futures):
            try:
                weights.append(future.result())
            except Exception as exc:
                pool.shutdown(cancel_futures=True)
                job = members[index][1]
                raise PipelineError(
                    f"ensemble member {index + 1} (recipe {job['recipe']}, seed {job['seed']}): "
                    f"{exc}"
                ) from exc
    return weights


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
    model_size: str = "n",
    device: str = "cpu",
    **options: Any,
) -> dict[str, Any]:
    """The pipeline's train step, outside KFP: the members of ``recipe`` (``recipe_members``,
    each with its seed from ``seed``: ``member_seeds``) trained by ``train_members``, all at
    once on a GPU and one after the other on the CPU, written to ``model_path``: the
    chosen ``.pt`` for one recipe, a folder of ``member-K.pt`` for several (which the
    export step pools into one ONNX graph). Returns the model's metadata. ``options`` are
    ``train_yolo``'s (batch, patience, average_last).
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
    print(
        f"[train] epoch {trainer.epoch + 1}/{trainer.epochs}: {losses}, val mAP50-95 {fitness:.3f}",
        flush=True,
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

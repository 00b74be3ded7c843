"""Training variants that the product does not offer, built from its training pieces.

A variant is ``RECIPE[@SIZE][+avgK][+KEY=VALUE ...][+consensus][+pasteK]``: a recipe
(the product's ``components.recipes.RECIPES``, or ``paste``: the reference with a real
scratch mark pasted into every labelled train photo each time it loads,
``benchmarks.paste``), a model size (the product's n and s, or ``n-p2``/``s-p2``:
ultralytics' yolov8-p2.yaml with a fourth, stride-4 output for small objects), with
``+avgK`` the EMA weights of the last K epochs averaged and kept when they do as well on
val, with ``+KEY=VALUE`` ultralytics training arguments on top of the recipe's, and with
``+consensus``/``+pasteK`` the train split relabelled or pasted once before training
(``benchmarks.bench_recipes``). ``train_variant`` trains one with the product's
``prepare_data``, ``new_model`` and ``fit``, so a plain variant trains as the pipeline does.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from components.recipes import RECIPES
from components.threads import loader_workers
from components.train import fit, new_model, prepare_data
from qcloop.errors import PipelineError

log = logging.getLogger(__name__)

BENCH_RECIPES: dict[str, dict[str, Any]] = {**RECIPES, "paste": {"paste": 1}}
BENCH_SIZES = ("n", "s", "n-p2", "s-p2")
# the ultralytics arguments the training sets itself: an extra hyperparameter may not
_SET_BY_TRAIN = frozenset(
    [
        "data",
        "epochs",
        "imgsz",
        "batch",
        "device",
        "seed",
        "deterministic",
        "workers",
        "patience",
        "save_period",
        "project",
        "name",
        "exist_ok",
        "plots",
        "model",
        "resume",
        "mode",
        "task",
    ]
)


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


def bench_recipe(recipe: str) -> dict[str, Any]:
    """The arguments of a recipe of ``BENCH_RECIPES``, or ``PipelineError`` naming them."""
    if recipe not in BENCH_RECIPES:
        raise PipelineError(f"recipe {recipe!r}: use one of {', '.join(BENCH_RECIPES)}")
    return dict(BENCH_RECIPES[recipe])


def bench_model_config(size: str) -> str:
    """``yolov8<size>.yaml`` of a size of ``BENCH_SIZES``, or ``PipelineError`` naming them."""
    if size not in BENCH_SIZES:
        raise PipelineError(f"model_size {size!r}: use one of {', '.join(BENCH_SIZES)}")
    return f"yolov8{size}.yaml"


def hyper_overrides(hyper: dict[str, Any]) -> dict[str, Any]:
    """``hyper`` checked as extra ultralytics training arguments (``{"box": 12.0}``);
    ``PipelineError`` for a key ultralytics does not know or one the training sets itself."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    for key in hyper:
        if key in _SET_BY_TRAIN:
            raise PipelineError(
                f"hyperparameter {key!r} is set by the training itself; "
                "use its own option (epochs, imgsz, batch, seed, ...)"
            )
        if key not in DEFAULT_CFG_DICT:
            raise PipelineError(
                f"hyperparameter {key!r}: not an ultralytics training argument "
                "(see ultralytics/cfg/default.yaml, e.g. box, scale, mosaic, lr0)"
            )
    return dict(hyper)


def parse_variant(text: str, model_size: str = "n") -> Variant:
    """``"scratch+avg10"`` -> ``("scratch", 10, model_size, {})``;
    ``"scratch@n-p2"`` -> ``("scratch", 0, "n-p2", {})``;
    ``"reference+box=12+scale=0.2"`` -> ``("reference", 0, model_size, {"box": 12, "scale": 0.2})``;
    ``"reference+consensus"``: the train labels drawn one way per part photographed again;
    ``"reference+paste2"``: two real scratch marks pasted into every labelled train photo
    first (``+paste`` is one). ``ValueError`` or ``PipelineError`` for a bad one."""
    import yaml

    head, *suffixes = text.split("+")
    recipe, at, size = head.partition("@")
    bench_recipe(recipe)
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
    hyper_overrides(hyper)
    size = size if at else model_size
    bench_model_config(size)
    return Variant(recipe, average, size, hyper, consensus, paste)


def train_variant(
    dataset_dir: Path,
    out_dir: Path,
    *,
    recipe: str,
    model_size: str,
    epochs: int,
    imgsz: int,
    batch: int = 16,
    device: str = "cpu",
    seed: int = 0,
    patience: int = 50,
    average_last: int = 0,
    hyper: dict[str, Any] | None = None,
    save_period: int = -1,
    workers: int | None = None,
    threads: int | None = None,
) -> Path:
    """Train one variant and return its weights: ``best.pt``, or with ``average_last`` K > 1
    the mean of the last K epochs' EMA weights where it does as well on val.

    ``save_period`` N > 0 also keeps every Nth epoch's EMA weights (``run/weights/epochK.pt``,
    for ``benchmarks.bench_snapshots``).
    """
    overrides = {**bench_recipe(recipe), **hyper_overrides(hyper or {})}
    paste = int(overrides.pop("paste", 0))
    if save_period > 0:
        overrides["save_period"] = save_period
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_yaml = prepare_data(Path(dataset_dir), out_dir)
    model = new_model(bench_model_config(model_size), threads=threads)
    window = EmaWindow(out_dir / "ema-window", average_last) if average_last > 1 else None
    if window is not None:
        model.add_callback("on_fit_epoch_end", window.on_fit_epoch_end)
    if paste > 0:
        from benchmarks.paste import use_paste

        model.add_callback("on_pretrain_routine_start", partial(use_paste, count=paste))
    log.info("%s@%s: %d epochs, %s, %s", recipe, model_size, epochs, device, overrides)
    best = fit(
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
    if window is None or len(window.files) < 2:
        return best
    averaged = average_checkpoints(best, window.files, best.parent / "averaged.pt")
    return pick_on_val(best, averaged, data_yaml, imgsz=imgsz, batch=batch, device=device)


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
        """Save this epoch's EMA weights and drop the oldest beyond the window."""
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
    log.info("averaged the EMA weights of %d epochs -> %s", len(states), out)
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

    The val split decides, as it chose ``best.pt``, so the test score stays unseen.
    """
    scores = {
        path: val_map50_95(path, data_yaml, imgsz=imgsz, batch=batch, device=device)
        for path in (best, averaged)
    }
    chosen = averaged if scores[averaged] >= scores[best] else best
    log.info(
        "val mAP50-95: best.pt %.4f, averaged %.4f -> %s",
        scores[best],
        scores[averaged],
        chosen.name,
    )
    return chosen

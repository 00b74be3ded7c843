"""Training recipes (named ultralytics hyperparameters), ensembles of them, and model sizes.

"reference" is ultralytics' defaults. "scratch" is tuned to the metal tags: grayscale
photos (hue/saturation jitter only adds noise), scratches that have no up or down
(vertical flips double the poses), a cosine schedule that ends at a low rate, and the
last 20 epochs without mosaic so the model settles on whole, unscaled tags as the
camera sees them. Several recipes joined by commas (``reference,scratch``) train one
model each, pooled into one ONNX graph (components/ensemble.py).
"""

from __future__ import annotations

from typing import Any

from qcloop.errors import PipelineError

# ultralytics ``train`` arguments by recipe name
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
}

# YOLOv8n / YOLOv8s, built from their yaml (no pretrained weights)
MODEL_SIZES = ("n", "s")


def recipe_overrides(recipe: str) -> dict[str, Any]:
    """The ultralytics arguments of a named recipe, or ``PipelineError`` naming the choices."""
    if recipe not in RECIPES:
        raise PipelineError(
            f"recipe {recipe!r}: use one of {', '.join(RECIPES)} "
            "(components/recipes.py RECIPES lists their hyperparameters)"
        )
    return dict(RECIPES[recipe])


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


def model_config(size: str) -> str:
    """``yolov8<size>.yaml`` for a model size, or ``PipelineError`` naming the choices."""
    if size not in MODEL_SIZES:
        raise PipelineError(
            f"model_size {size!r}: use one of {', '.join(MODEL_SIZES)} "
            "(YOLOv8n or YOLOv8s, trained from their yaml)"
        )
    return f"yolov8{size}.yaml"

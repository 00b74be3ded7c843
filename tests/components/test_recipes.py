"""Training recipes, ensembles of them, and model sizes."""

from __future__ import annotations

import pytest

from components.recipes import model_config
from qcloop.errors import PipelineError


def test_unknown_recipe_names_the_choices() -> None:
    from components.recipes import recipe_overrides

    with pytest.raises(PipelineError, match="recipe 'fancy': use one of reference, scratch"):
        recipe_overrides("fancy")
    assert recipe_overrides("reference") == {}
    scratch = recipe_overrides("scratch")
    assert scratch["flipud"] == 0.5 and scratch["hsv_s"] == 0.0
    scratch["flipud"] = 0.0
    assert recipe_overrides("scratch")["flipud"] == 0.5, "callers get a copy"


def test_cli_offers_every_recipe() -> None:
    from components.recipes import RECIPES
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset-version", "v1", "--recipe", "scratch"])
    assert args.recipe == "scratch"
    assert (args.tolerance, args.seed) == (0.02, 0)  # the pipeline's defaults
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    (recipe,) = [a for a in train._actions if a.dest == "recipe"]
    assert all(name in recipe.help for name in RECIPES)


def test_recipe_members_name_an_ensemble() -> None:
    from components.recipes import recipe_members

    assert recipe_members("scratch") == ["scratch"]
    assert recipe_members("reference, scratch") == ["reference", "scratch"]
    with pytest.raises(PipelineError, match="recipe 'fancy': use one of reference, scratch"):
        recipe_members("reference,fancy")
    assert recipe_members("scratch,scratch") == ["scratch", "scratch"]
    with pytest.raises(PipelineError, match="'reference,': an empty member"):
        recipe_members("reference,")


def test_a_repeated_recipe_trains_with_the_next_seed() -> None:
    from components.recipes import member_seeds

    assert member_seeds(["reference"], 7) == [7]
    assert member_seeds(["reference", "scratch"], 0) == [0, 0]
    assert member_seeds(["reference", "scratch", "reference", "scratch", "reference"], 3) == [
        3,
        3,
        4,
        4,
        5,
    ]


def test_model_sizes_name_their_yaml() -> None:
    assert model_config("n") == "yolov8n.yaml" and model_config("s") == "yolov8s.yaml"
    with pytest.raises(PipelineError, match="model_size 'n-p2': use one of n, s "):
        model_config("n-p2")

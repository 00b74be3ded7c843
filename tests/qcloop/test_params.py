"""The training parameters' model: defaults, checks and the errors a user reads."""

from __future__ import annotations

import pytest

from qcloop.errors import PipelineError
from qcloop.params import DEFAULTS, MODEL_DECIDING, TRAINING_RECIPE, TrainingParams, training_params


def test_defaults_are_the_documented_ones() -> None:
    assert (DEFAULTS.epochs, DEFAULTS.imgsz, DEFAULTS.batch) == (30, 480, 16)
    assert (DEFAULTS.min_map50_95, DEFAULTS.tolerance) == (0.3, 0.02)
    assert (DEFAULTS.recipe, DEFAULTS.model_size, DEFAULTS.approval) == (
        "reference",
        "n",
        "manual",
    )


def test_bad_values_are_named_with_what_is_wrong() -> None:
    with pytest.raises(PipelineError, match=r"imgsz 500: .*multiple of 32"):
        training_params({"imgsz": 500})
    with pytest.raises(PipelineError, match=r"model_size 'm'"):
        training_params({"model_size": "m"})
    with pytest.raises(PipelineError, match=r"approval 'yes'"):
        training_params({"approval": "yes"})
    with pytest.raises(PipelineError, match=r"epochs 0: .*greater than or equal to 1"):
        training_params({"epochs": 0})


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(PipelineError, match=r"no parameter average_last \(there are .*epochs"):
        training_params({"average_last": 10})
    # a name the caller handles itself is not a training parameter, nor an error
    assert training_params({"dataset_version": "v2"}, extra=("dataset_version",)) == DEFAULTS


def test_recipe_members_are_trimmed_and_never_empty() -> None:
    assert training_params({"recipe": "reference, scratch"}).recipe == "reference,scratch"
    with pytest.raises(PipelineError, match="an empty member"):
        training_params({"recipe": "scratch,,reference"})


def test_picked_groups_are_fields_and_json_ready() -> None:
    params = TrainingParams(epochs=3, seed=2)
    assert set(MODEL_DECIDING) <= set(TrainingParams.model_fields)
    assert set(TRAINING_RECIPE) <= set(MODEL_DECIDING)
    assert params.picked(TRAINING_RECIPE)["epochs"] == 3
    # where a model runs and who approves it do not change the model
    assert not {"device", "gpu_limit", "approval"} & set(MODEL_DECIDING)

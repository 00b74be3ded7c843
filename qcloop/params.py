"""The training run's parameters: one typed model, the single source of their defaults.

The CLI (``qcloop train``), both Kubeflow pipelines (their run parameters), the local
runner and the components take their defaults and checks from ``TrainingParams``.

Beside them, how a model's output becomes boxes (``CONFIDENCE``, ``NMS_IOU``,
``LETTERBOX``): the evaluation scores a model with these values, a release carries them
(``qcloop.contracts.Thresholds``) and edge agents apply them, so that the boxes a plant
gets are those the gate scored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qcloop.errors import PipelineError

ModelSize = Literal["n", "s"]
Approval = Literal["auto", "manual"]
LetterboxMode = Literal["rect", "square"]

CONFIDENCE = 0.25  # boxes reported above this score (ultralytics predict's default)
NMS_IOU = 0.7  # NMS drops a box overlapping a better one of its class by more (ultralytics')
# dynamic-input models: each frame on the smallest canvas of stride multiples around it
# ("rect", as ultralytics predicts and validates them) or on the square input ("square");
# a static model always gets its fixed input size
LETTERBOX: LetterboxMode = "rect"
# which ONNX a release ships: "auto" takes the INT8 variant when its test mAP50-95 is at
# most INT8_DEFAULT_DROP below the FP32's (components.release.choose_variant)
VARIANTS = ("auto", "fp32", "int8")
INT8_DEFAULT_DROP = 0.01

# what decides the model and its gate: a run with the same dataset version, code and
# these values would train and judge the same model again (components.attempts)
MODEL_DECIDING = (
    "epochs",
    "imgsz",
    "batch",
    "seed",
    "model_size",
    "patience",
    "recipe",
    "dynamic_onnx",
    "int8",
    "min_map50_95",
    "tolerance",
)
# what the registry records of how a model was trained (MLflow run parameters)
TRAINING_RECIPE = ("epochs", "imgsz", "batch", "seed", "model_size", "patience", "recipe")


class TrainingParams(BaseModel):
    """How a model is trained, exported, gated and approved."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=30, ge=1, description="training epochs")
    imgsz: int = Field(
        default=480, ge=32, multiple_of=32, description="training and export image size"
    )
    batch: int = Field(default=16, ge=1, description="training batch size")
    seed: int = Field(
        default=0,
        ge=0,
        description="training seed (a recipe named again in the recipe trains with the next one)",
    )
    model_size: ModelSize = Field(default="n", description="YOLOv8n or YOLOv8s")
    patience: int = Field(default=50, ge=0, description="epochs without gain before stopping")
    recipe: str = Field(
        default="reference",
        description=(
            "training hyperparameters: reference (ultralytics defaults) or scratch (tuned to "
            "thin scratches on grayscale tags); several joined by commas train one model each "
            "and register their ensemble as one ONNX (reference,scratch: the best on unseen "
            "captures, 2x the inference cost; docs/performance.md); a recipe named again "
            "trains with the next seed (reference,scratch,reference)"
        ),
    )
    dynamic_onnx: bool = Field(
        default=False,
        description="export with free height/width: edge agents run 3:2 frames at 480x320",
    )
    int8: bool = Field(default=False, description="also register a static INT8 variant")
    min_map50_95: float = Field(default=0.3, ge=0.0, le=1.0, description="gate: minimum mAP50-95")
    tolerance: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description=(
            "gate: at most this much mAP50-95 below the production model on the same test split"
        ),
    )
    device: str = Field(
        default="cpu",
        description=(
            "cpu (every core the step may use: its CPU affinity, capped by a container CPU "
            "limit), 0 (first GPU), 0,1, ..."
        ),
    )
    gpu_limit: int = Field(
        default=0, ge=0, description="GPUs the train step's pod asks for (0: none)"
    )
    approval: Approval = Field(
        default="manual",
        description=(
            "auto: move the production alias when the gate passes (audited; for labs: "
            "the bridge refuses it for production fleets); manual: `qcloop model approve` does"
        ),
    )

    @field_validator("recipe")
    @classmethod
    def _members_named(cls, value: str) -> str:
        members = [part.strip() for part in value.split(",")]
        if not all(members):
            raise ValueError(
                "an empty member; write one recipe, or several joined by commas for an "
                "ensemble (e.g. reference,scratch)"
            )
        return ",".join(members)

    def picked(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values of ``names`` (e.g. ``MODEL_DECIDING``), JSON-ready."""
        return {name: getattr(self, name) for name in names}


DEFAULTS = TrainingParams()


def help_of(name: str) -> str:
    """The description of parameter ``name`` (for the CLI's ``--help``)."""
    return TrainingParams.model_fields[name].description or ""


def training_params(values: dict[str, Any], *, extra: tuple[str, ...] = ()) -> TrainingParams:
    """``values`` checked as training parameters, or ``PipelineError`` naming each bad one.

    ``extra``: names the caller takes itself (e.g. the pipeline's ``dataset_version``),
    left out of the check.
    """
    own = {name: value for name, value in values.items() if name not in extra}
    try:
        return TrainingParams.model_validate(own)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "parameters"
            if error["type"] == "extra_forbidden":
                known = sorted((*TrainingParams.model_fields, *extra))
                problems.append(f"no parameter {name} (there are {', '.join(known)})")
            else:
                problems.append(f"{name} {error.get('input')!r}: {error['msg']}")
        raise PipelineError("training parameters: " + "; ".join(problems)) from None

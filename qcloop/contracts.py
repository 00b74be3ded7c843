"""The contracts between the teams: three interfaces and one message.

1. ``RawImageSidecar``  - JSON beside every image in the raw store.
2. ``DatasetManifest``  - ``manifest.json`` of a labelled, DVC-versioned dataset.
3. ``ModelRecord``      - what a registered model version carries (MLflow tags/metrics).
4. ``ReleaseMessage``   - what a fleet must run, published inside a signed
                          ``ReleaseEnvelope`` (the retained MQTT message).

Every part reads and writes these through ``to_json``/``from_json`` so that a
payload that breaks the contract fails loudly, naming the field.
``export_schemas`` writes their JSON Schemas (``qcloop schemas``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Final, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from qcloop.errors import ContractError
from qcloop.params import CONFIDENCE, NMS_IOU, LetterboxMode

SCHEMA_VERSION: Final = 1
SHA256_RE = r"^[0-9a-f]{64}$"
KEY_ID_RE = r"^[0-9a-f]{16}$"  # the first 16 hex digits of the public key's sha256
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

T = TypeVar("T", bound="Contract")


def utcnow() -> datetime:
    """Current time, timezone-aware UTC (all contract timestamps are UTC)."""
    return datetime.now(timezone.utc)


class Contract(BaseModel):
    """Base of all contract models: frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        """Serialise to compact, stable JSON."""
        return self.model_dump_json(exclude_none=False)

    @classmethod
    def from_json(cls: type[T], text: str | bytes, *, source: str = "payload") -> T:
        """Parse and validate; raise ``ContractError`` naming ``source`` and the bad fields."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ContractError(_describe(cls.__name__, source, exc)) from None

    @classmethod
    def load(cls: type[T], path: Path) -> T:
        """Read and validate a JSON file."""
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ContractError(f"{path}: cannot read {cls.__name__}: {exc.strerror}") from None
        return cls.from_json(text, source=str(path))

    def save(self, path: Path) -> None:
        """Write as indented JSON, atomically (temp file + fsync + rename)."""
        from qcloop.fsutil import atomic_write

        atomic_write(Path(path), (self.model_dump_json(indent=2) + "\n").encode())


def _describe(model: str, source: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"field '{loc}': {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return f"{source}: not a valid {model}: " + "; ".join(parts) + more


# ---------------------------------------------------------------- detections


class Detection(Contract):
    """One predicted box, in the pixels of the image it was found in."""

    label: str = Field(min_length=1)
    score: float = Field(ge=0.0, le=1.0)
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in image pixels")

    @field_validator("box")
    @classmethod
    def _ordered(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = box
        if x2 < x1 or y2 < y1:
            raise ValueError(f"box {box} must satisfy x1 <= x2 and y1 <= y2")
        return box


class ModelRef(Contract):
    """Names a registered model version."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)


# ---------------------------------------------------------------- 1. raw image

CaptureReason = Literal[
    "import", "synthetic", "low_confidence", "sampling", "operator_verdict", "manual"
]


class RawImageSidecar(Contract):
    """JSON stored beside a raw image (``<key>.json``): where, when, why, and predictions."""

    schema_version: Literal[1] = SCHEMA_VERSION
    key: str = Field(min_length=1, description="object key of the image in the raw store")
    sha256: str = Field(pattern=SHA256_RE)
    content_type: str = "image/jpeg"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    source: str = Field(min_length=1, description="camera, device id or import source")
    device_id: str | None = None
    captured_at: datetime = Field(default_factory=utcnow)
    reason: CaptureReason
    original_name: str | None = None
    model: ModelRef | None = Field(default=None, description="model that made the predictions")
    predictions: list[Detection] = Field(default_factory=list)


# ---------------------------------------------------------------- 2. dataset


class ManifestImage(Contract):
    """One image of a dataset version."""

    file: str = Field(description="path relative to the dataset root, e.g. images/x.jpg")
    label_file: str = Field(description="YOLO txt path relative to the dataset root")
    split: Split
    group: str = Field(min_length=1, description="capture id: images of one group share a split")
    sha256: str = Field(pattern=SHA256_RE)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    boxes: int = Field(ge=0)
    raw_key: str | None = Field(default=None, description="key of the image in the raw store")


class SplitCounts(Contract):
    """Counts of one split."""

    images: int = Field(ge=0)
    boxes: int = Field(ge=0)
    negatives: int = Field(ge=0, description="images with no box (defect-free)")


class DatasetManifest(Contract):
    """``manifest.json`` at the root of a labelled dataset version."""

    schema_version: Literal[1] = SCHEMA_VERSION
    version: str = Field(pattern=r"^v[0-9]+$")
    parent: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    class_names: list[str] = Field(min_length=1)
    source: str = Field(description="where the labels came from")
    images: list[ManifestImage]
    counts: dict[Split, SplitCounts]

    @model_validator(mode="after")
    def _consistent(self) -> DatasetManifest:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if self.counts != count_splits(self.images):
            raise ValueError("counts do not match the images listed")
        groups: dict[str, str] = {}
        for img in self.images:
            if groups.setdefault(img.group, img.split) != img.split:
                raise ValueError(f"group '{img.group}' is spread over several splits")
        return self


def count_splits(images: list[ManifestImage]) -> dict[Split, SplitCounts]:
    """Per-split counts of images, boxes and negatives."""
    counts: dict[Split, SplitCounts] = {}
    for split in SPLITS:
        members = [i for i in images if i.split == split]
        counts[split] = SplitCounts(
            images=len(members),
            boxes=sum(i.boxes for i in members),
            negatives=sum(1 for i in members if i.boxes == 0),
        )
    return counts


# ---------------------------------------------------------------- 3. model


class EvalMetrics(Contract):
    """Detection metrics on the test split."""

    map50: float = Field(ge=0.0, le=1.0)
    map50_95: float = Field(ge=0.0, le=1.0)
    precision: float = Field(ge=0.0, le=1.0)
    recall: float = Field(ge=0.0, le=1.0)
    images: int = Field(ge=0, description="test images evaluated")
    latency_p50_ms: float | None = Field(default=None, ge=0, description="CPU, batch 1")
    latency_p95_ms: float | None = Field(default=None, ge=0, description="CPU, batch 1")
    map50_95_low: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="capture-grouped bootstrap 95% interval of map50_95: lower bound",
    )
    map50_95_high: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="capture-grouped bootstrap 95% interval of map50_95: upper bound",
    )
    captures: int | None = Field(
        default=None, ge=0, description="capture groups in the evaluated split"
    )

    @model_validator(mode="after")
    def _interval(self) -> EvalMetrics:
        low, high = self.map50_95_low, self.map50_95_high
        if (low is None) != (high is None):
            raise ValueError("give both map50_95_low and map50_95_high, or neither")
        if low is not None and high is not None and low > high:
            raise ValueError(f"map50_95_low {low} > map50_95_high {high}")
        return self


class OnnxVariant(Contract):
    """Another ONNX of the same model version (e.g. INT8 for the edge), with its own scores."""

    artifact: str = Field(description="artifact path inside the run")
    sha256: str = Field(pattern=SHA256_RE)
    size: int = Field(gt=0)
    metrics: EvalMetrics


class ModelRecord(Contract):
    """A registered model version as the rest of the loop sees it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    onnx_artifact: str = Field(description="artifact path of the ONNX inside the run")
    onnx_sha256: str = Field(pattern=SHA256_RE)
    onnx_size: int = Field(gt=0)
    input_size: int = Field(gt=0, multiple_of=32)
    class_names: list[str] = Field(min_length=1)
    metrics: EvalMetrics
    dataset_version: str = Field(min_length=1)
    code_version: str = Field(min_length=1)
    approved: bool = False
    approved_by: str | None = None
    approved_at: datetime | None = None
    int8: OnnxVariant | None = Field(default=None, description="INT8 variant, if quantised")


# ---------------------------------------------------------------- 4. release


class Thresholds(Contract):
    """How a device turns the released model's output into boxes, and which frames it sends
    back. The defaults are those the evaluation scores models with (``qcloop.params``)."""

    confidence: float = Field(default=CONFIDENCE, ge=0.0, le=1.0, description="report boxes above")
    iou: float = Field(default=NMS_IOU, gt=0.0, le=1.0, description="NMS IoU")
    letterbox: LetterboxMode | None = Field(
        default=None,
        description="dynamic-input models: rect (each frame on the smallest canvas of stride "
        "multiples, as the evaluation ran it) or square (on the square input size); none: "
        "the device's rect_input",
    )
    feedback_below: float = Field(
        default=0.5, ge=0.0, le=1.0, description="send the image back if its best score is below"
    )


class ReleaseMessage(Contract):
    """Retained on ``qcloop/fleets/<fleet>/release``: what the fleet must run."""

    schema_version: Literal[1] = SCHEMA_VERSION
    fleet: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelRef
    sha256: str = Field(pattern=SHA256_RE)
    size: int = Field(gt=0)
    url: str = Field(description="file://, http(s):// or s3://bucket/key of the ONNX")
    input_size: int = Field(gt=0, multiple_of=32)
    class_names: list[str] = Field(min_length=1)
    variant: Literal["fp32", "int8"] = Field(default="fp32", description="which ONNX this is")
    variant_reason: str | None = Field(
        default=None, max_length=300, description="why this variant ships (the bridge's choice)"
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    released_at: AwareDatetime = Field(default_factory=utcnow)
    released_by: str = Field(min_length=1)
    sequence: int = Field(
        ge=1, description="one more than the fleet's previous release; devices refuse lower ones"
    )
    expires_at: AwareDatetime = Field(description="devices refuse the release after this time")
    key_id: str | None = Field(
        default=None,
        pattern=KEY_ID_RE,
        description="qcloop.signing.key_id of the key that signs it; none: unsigned",
    )
    approval: str | None = Field(
        default=None,
        max_length=8192,
        description="the approver's signed approval of this version, as its MLflow tag "
        "qcloop.approval holds it (a bridge with release.approvers passes it on); devices "
        "with release.approvers check it themselves",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not re.match(r"^(file|https?|s3)://", url):
            raise ValueError(f"url '{url}' must start with file://, http(s):// or s3://")
        return url

    @model_validator(mode="after")
    def _expires_after_release(self) -> ReleaseMessage:
        if self.expires_at <= self.released_at:
            raise ValueError("expires_at must be after released_at")
        return self


class ReleaseSignature(Contract):
    """One signature of a ``ReleaseEnvelope``'s signed bytes."""

    keyid: str = Field(pattern=KEY_ID_RE, description="qcloop.signing.key_id of the signer")
    sig: str = Field(min_length=1, description="base64 Ed25519 signature of the signed bytes")


class ReleaseEnvelope(Contract):
    """What the release topics carry: a release's exact bytes and their signatures.

    ``signed`` is the base64 of the ``ReleaseMessage`` JSON exactly as the bridge wrote it;
    signatures cover those bytes, which are parsed only once one verifies
    (``qcloop.signing``). No signatures: an unsigned release (labs only).
    """

    signed: str = Field(min_length=1, description="base64 of the exact ReleaseMessage JSON")
    signatures: list[ReleaseSignature] = Field(default_factory=list, max_length=8)


# ---------------------------------------------------------------- inference result


class InferenceResult(Contract):
    """What a device publishes on ``qcloop/devices/<id>/results`` for every frame."""

    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: str
    image: str
    model: ModelRef | None
    detections: list[Detection]
    inferred_at: datetime = Field(default_factory=utcnow)
    latency_ms: float = Field(ge=0.0)
    feedback_key: str | None = Field(default=None, description="raw-store key if sent back")


CONTRACTS: dict[str, type[Contract]] = {
    "raw-image-sidecar": RawImageSidecar,
    "dataset-manifest": DatasetManifest,
    "model-record": ModelRecord,
    "release-message": ReleaseMessage,
    "release-envelope": ReleaseEnvelope,
    "inference-result": InferenceResult,
}


def export_schemas(out_dir: Path) -> list[Path]:
    """Write one ``<name>.schema.json`` per contract into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in CONTRACTS.items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written

"""Contracts: validation names the field; schemas export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcloop.contracts import (
    CONTRACTS,
    DatasetManifest,
    Detection,
    EvalMetrics,
    ManifestImage,
    ModelRef,
    ReleaseMessage,
    count_splits,
    export_schemas,
)
from qcloop.errors import ContractError

SHA = "a" * 64


def _release(**over: object) -> dict:
    base = {
        "fleet": "line-1",
        "model": {"name": "m", "version": "1"},
        "sha256": SHA,
        "size": 10,
        "url": "file:///tmp/m.onnx",
        "input_size": 320,
        "class_names": ["scratch"],
        "released_at": "2026-01-01T00:00:00Z",
        "released_by": "me",
        "sequence": 1,
        "expires_at": "2026-01-31T00:00:00Z",
    }
    base.update(over)
    return base


def test_release_round_trip() -> None:
    msg = ReleaseMessage.model_validate(_release())
    again = ReleaseMessage.from_json(msg.to_json())
    assert again == msg
    assert again.thresholds.confidence == 0.25


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("sha256", "xyz", "field 'sha256'"),
        ("url", "ftp://x/y", "field 'url'"),
        ("input_size", 300, "field 'input_size'"),
        ("fleet", "a/b", "field 'fleet'"),
        ("sequence", 0, "field 'sequence'"),
        ("key_id", "not-hex", "field 'key_id'"),
        ("expires_at", "2026-01-31T00:00:00", "field 'expires_at'"),  # no time zone
        ("expires_at", "2025-12-31T00:00:00Z", "expires_at must be after released_at"),
    ],
)
def test_release_rejects_bad_field_naming_it(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ContractError, match=fragment) as err:
        ReleaseMessage.from_json(json.dumps(_release(**{field: value})), source="topic x")
    assert "topic x" in str(err.value)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ContractError, match=r"surprise.*Extra"):
        ReleaseMessage.from_json(json.dumps(_release(surprise=1)))


def test_a_release_needs_its_sequence_and_expiry() -> None:
    for field in ("sequence", "expires_at"):
        fields = {k: v for k, v in _release().items() if k != field}
        with pytest.raises(ContractError, match=f"field '{field}': Field required"):
            ReleaseMessage.from_json(json.dumps(fields))


def test_detection_box_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="x1 <= x2"):
        Detection(label="scratch", score=0.5, box=(10, 0, 5, 4))


def _image(file: str, split: str, group: str, boxes: int) -> ManifestImage:
    return ManifestImage(
        file=f"images/{file}.jpg",
        label_file=f"labels/{file}.txt",
        split=split,  # type: ignore[arg-type]
        group=group,
        sha256=SHA,
        width=10,
        height=10,
        boxes=boxes,
    )


def test_manifest_counts_and_groups_are_checked() -> None:
    images = [_image("a", "train", "g1", 2), _image("b", "test", "g2", 0)]
    manifest = DatasetManifest(
        version="v1",
        class_names=["scratch"],
        source="x",
        images=images,
        counts=count_splits(images),
    )
    assert manifest.counts["test"].negatives == 1
    assert manifest.counts["train"].boxes == 2
    with pytest.raises(ValueError, match="counts"):
        DatasetManifest(
            version="v1",
            class_names=["s"],
            source="x",
            images=images,
            counts=count_splits(images[:1]),
        )
    split_group = [_image("a", "train", "g1", 1), _image("b", "test", "g1", 1)]
    with pytest.raises(ValueError, match="group 'g1'"):
        DatasetManifest(
            version="v1",
            class_names=["s"],
            source="x",
            images=split_group,
            counts=count_splits(split_group),
        )


def test_export_schemas(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert len(written) == len(CONTRACTS)
    schema = json.loads((tmp_path / "release-message.schema.json").read_text())
    assert "sha256" in schema["properties"]
    assert ModelRef.model_json_schema()["required"] == ["name", "version"]


def test_load_names_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("{}")
    with pytest.raises(ContractError, match=str(path)):
        DatasetManifest.load(path)


def test_published_schemas_are_current(tmp_path: Path) -> None:
    """docs/schemas/ is what other teams read: regenerate with `make schemas` when it drifts."""
    published = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    for path in export_schemas(tmp_path):
        assert (published / path.name).read_text() == path.read_text(), (
            f"run make schemas ({path.name})"
        )


def test_eval_metrics_of_registered_models_without_an_interval_still_validate() -> None:
    old = '{"map50": 0.6, "map50_95": 0.3, "precision": 0.7, "recall": 0.5, "images": 4}'
    metrics = EvalMetrics.from_json(old)
    assert metrics.map50_95_low is None and metrics.map50_95_high is None
    assert metrics.captures is None


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [(0.2, None, "give both map50_95_low and map50_95_high"), (0.4, 0.2, "0.4 > map50_95_high")],
)
def test_eval_metrics_interval_is_both_bounds_in_order(
    low: float | None, high: float | None, message: str
) -> None:
    base = {"map50": 0.6, "map50_95": 0.3, "precision": 0.7, "recall": 0.5, "images": 4}
    payload = json.dumps({**base, "map50_95_low": low, "map50_95_high": high})
    with pytest.raises(ContractError, match=message):
        EvalMetrics.from_json(payload)

"""Model-assisted labelling: images no model has seen get the released model's boxes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from qcloop.contracts import ModelRef, RawImageSidecar, ReleaseMessage, utcnow
from qcloop.settings import LabelStudioSettings, ReleaseSettings, Settings
from qcloop.signing import generate_keypair, load_private_key, seal
from qcloop.storage import open_store, put_raw_image, raw_key, released_key, sha256_bytes
from qcloop.yolo import image_size
from qcloop_labelling.assist import production_assistant
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.sync_in import sync_in
from tests.labelling.helpers import METAL_TAGS, metal_tag_images, put_feedback_image, task_detail

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


@pytest.fixture(scope="module")
def scratch_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 1-class model: one epoch on three captures of the real data, ONNX at 160."""
    from components.export import export_onnx
    from components.train import train_yolo
    from tests.components.datasets import build_dataset

    tmp = tmp_path_factory.mktemp("assist-model")
    build_dataset(METAL_TAGS, tmp / "data", {"train": 2, "test": 1})
    weights = train_yolo(tmp / "data", tmp / "train", epochs=1, imgsz=160, batch=4)
    return export_onnx(weights, tmp / "model.onnx", imgsz=160)


def _release(settings: Settings, onnx: Path, key: Path) -> None:
    """What the bridge keeps in the store: the release's envelope, signed with ``key``."""
    store = open_store(settings.store)
    store.put_bytes("models/qcloop-detector/7/model.onnx", onnx.read_bytes())
    message = ReleaseMessage(
        fleet="line-1",
        model=ModelRef(name="qcloop-detector", version="7"),
        sha256=sha256_bytes(onnx.read_bytes()),
        size=onnx.stat().st_size,
        url=store.url("models/qcloop-detector/7/model.onnx"),
        input_size=160,
        class_names=["scratch"],
        released_by="test",
        sequence=1,
        expires_at=utcnow() + timedelta(days=30),
    )
    envelope = seal(message, load_private_key(key))
    store.put_bytes(released_key("qcloop-detector"), envelope.payload())


def test_unseen_images_get_the_released_models_boxes(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    scratch_onnx: Path,
    tmp_path: Path,
) -> None:
    # given an edge image (with its device's predictions) and an imported one (none)
    edge = put_feedback_image(settings, metal_tag_images(1, skip=12)[0], [0.4])
    image = metal_tag_images(1, skip=13)[0]  # a capture the model never saw
    data = image.read_bytes()
    width, height = image_size(image)
    digest = sha256_bytes(data)
    put_raw_image(
        open_store(settings.store),
        data,
        RawImageSidecar(
            key=raw_key(digest),
            sha256=digest,
            width=width,
            height=height,
            source="import",
            reason="import",
            original_name=image.name,
        ),
    )
    # and nothing released yet: no assistant
    assert production_assistant(settings, progress=print) is None
    # when a model is released (signed by the bridge's key, which labelling trusts)...
    key, public = generate_keypair(tmp_path / "keys")
    _release(settings, scratch_onnx, key)
    # ...a labelling side trusting another key does not use it
    _, stranger = generate_keypair(tmp_path / "stranger")
    other = settings.model_copy(update={"release": ReleaseSettings(public_keys=[stranger])})
    assert production_assistant(other, progress=print) is None
    # and sync-in runs with the assistant (low floor: 1-epoch model)
    low = settings.model_copy(
        update={
            "label_studio": ls_settings.model_copy(update={"assist_conf": 1e-4}),
            "release": ReleaseSettings(public_keys=[public]),
        }
    )
    assist, cleanup = production_assistant(low, progress=print)  # type: ignore[misc]
    try:
        report = sync_in(low, client, project_id, assist=assist, progress=print)
    finally:
        cleanup()
    # then the imported image carries the released model's boxes; the edge image keeps its own
    token = ls_settings.token.get_secret_value()  # type: ignore[union-attr]
    versions = {}
    for task_id in report.task_ids:
        task = task_detail(ls_settings.url, token, task_id)
        versions[task["data"]["sha256"]] = {p["model_version"] for p in task["predictions"]}
    assert versions[digest] == {"qcloop-detector:7"}
    assert versions[edge.sha256] == {"qcloop-detector:3"}
    assert report.with_predictions == 2

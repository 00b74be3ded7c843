"""Model-assisted labelling: images no model has seen get the released model's boxes."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcloop.contracts import RawImageSidecar
from qcloop.settings import LabelStudioSettings, ReleaseSettings, Settings
from qcloop.signing import generate_keypair
from qcloop.storage import open_store, put_raw_image, raw_key, sha256_bytes
from qcloop.yolo import image_size
from qcloop_labelling.assist import production_assistant
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.sync_in import sync_in
from tests.labelling.helpers import metal_tag_images, put_feedback_image, release_model, task_detail

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


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
    release_model(settings, scratch_onnx, key, "7")
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

"""A real Label Studio server for the session, and the settings the sync needs.

The server runs from its own venv (``scripts/install-label-studio.sh``), headless,
on loopback, with its own sqlite data dir (``qcloop_labelling.server``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from qcloop.settings import Settings, StoreSettings
from qcloop_labelling.client import LabelStudioClient, connect
from qcloop_labelling.errors import LabelStudioUnavailable
from qcloop_labelling.project import ensure_project
from qcloop_labelling.server import find_binary, local_server
from qcloop_labelling.settings import LabelStudioSettings
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


class LabelStudioServer(NamedTuple):
    """A running Label Studio: where, and the legacy API token of its admin."""

    url: str
    token: str


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio server on loopback for the whole session (never skipped)."""
    try:
        binary = find_binary(ROOT)
    except LabelStudioUnavailable as exc:
        pytest.fail(str(exc))
    data_dir = tmp_path_factory.mktemp("label-studio")
    try:
        with local_server(binary, data_dir, free_port()) as server:
            yield LabelStudioServer(server.url, server.token)
    except LabelStudioUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture
def ls_settings(
    label_studio: LabelStudioServer, request: pytest.FixtureRequest
) -> LabelStudioSettings:
    """Settings pointing at the session server, with a project of this test's own."""
    title = "qcloop " + request.node.name[:40]
    return LabelStudioSettings(url=label_studio.url, token=label_studio.token, project_title=title)


@pytest.fixture
def client(ls_settings: LabelStudioSettings) -> Iterator[LabelStudioClient]:
    """A checked client of the session server."""
    c = connect(ls_settings)
    yield c
    c.close()


@pytest.fixture
def project_id(
    client: LabelStudioClient, ls_settings: LabelStudioSettings, settings: Settings
) -> int:
    """This test's project, bootstrapped."""
    return ensure_project(client, ls_settings.project_title, list(settings.class_names)).id


@pytest.fixture(scope="session")
def scratch_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 1-class model: one epoch on three captures of the real data (``best.pt``)."""
    from components.train import train_yolo
    from tests.components.datasets import build_dataset
    from tests.labelling.helpers import METAL_TAGS

    tmp = tmp_path_factory.mktemp("assist-model")
    build_dataset(METAL_TAGS, tmp / "data", {"train": 2, "test": 1})
    return train_yolo(tmp / "data", tmp / "train", epochs=1, imgsz=160, batch=4)


@pytest.fixture(scope="session")
def scratch_onnx(scratch_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scratch_weights`` as ONNX at 160 px."""
    from components.export import export_onnx

    return export_onnx(scratch_weights, tmp_path_factory.mktemp("onnx") / "model.onnx", imgsz=160)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Core settings: a fresh local store, workspace and DVC remote under tmp_path."""
    return Settings(
        home=tmp_path / "home",
        workspace=tmp_path / "ws",
        store=StoreSettings(path=tmp_path / "store"),
        dvc={"remote": str(tmp_path / "remote")},
    )

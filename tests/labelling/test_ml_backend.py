"""The ML backend: Label Studio's predictions from the model in production, refreshed when it moves.

A real backend (``qcloop_labelling.ml_backend``) on a loopback port, a real Label Studio
(the session server) that calls it, a real S3 endpoint (moto's server) holding the raw
images and the signed releases, and a real 1-epoch model predicting on real photos.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from pydantic import SecretStr

from components.export import export_onnx
from qcloop.settings import MlBackendSettings, ReleaseSettings, Settings, StoreSettings
from qcloop.signing import generate_keypair
from qcloop_labelling.cli import cmd_bootstrap
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.errors import LabelStudioApiError
from qcloop_labelling.ml_backend import NOT_RELEASED, MlBackendServer, make_server
from qcloop_labelling.ml_connect import ensure_ml_backend, register_when_ready
from qcloop_labelling.project import label_config
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from qcloop_labelling.tasks import data_url
from tests.labelling.helpers import (
    metal_tag_images,
    put_feedback_image,
    release_model,
    task_detail,
)
from tests.services import free_port

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]

PASSWORD = "test-only-ml-backend-password"
CONFIG = label_config(["scratch"])


@pytest.fixture(scope="module")
def other_onnx(scratch_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as another ONNX file (exported at 192 px): a second model."""
    return export_onnx(scratch_weights, tmp_path_factory.mktemp("onnx-192") / "m.onnx", imgsz=192)


def backend_settings(
    settings: Settings, ls: LabelStudioSettings, public_key: Path, store: StoreSettings
) -> Settings:
    """Settings of a backend on a free port with a password, trusting ``public_key``."""
    port = free_port()
    ml = MlBackendSettings(
        url=f"http://127.0.0.1:{port}", port=port, password=PASSWORD, refresh_s=0.2
    )
    return settings.model_copy(
        update={
            "store": store,
            "release": ReleaseSettings(public_keys=[public_key]),
            # a 1-epoch model is unsure of everything: a low floor, so that it draws boxes
            "label_studio": ls.model_copy(update={"assist_conf": 1e-4, "ml_backend": ml}),
        }
    )


@contextmanager
def running(settings: Settings) -> Iterator[MlBackendServer]:
    """The backend serving until the block ends."""
    server = make_server(settings).start()
    try:
        yield server
    finally:
        server.stop()


def wait_serving(server: MlBackendServer, version: str, timeout: float = 120.0) -> None:
    """Until /health says ``version`` is served (the refresh thread loads it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{server.url}/health", timeout=5).json()["model_version"] == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"the backend does not serve {version} after {timeout} s")


def post(server: MlBackendServer, path: str, body: dict[str, Any]) -> requests.Response:
    """A request as Label Studio sends it, with the password."""
    return requests.post(
        f"{server.url}{path}", json=body, auth=("label-studio", PASSWORD), timeout=60
    )


def retrieve_predictions(ls: LabelStudioSettings, project_id: int) -> dict[str, Any]:
    """The data manager's "Retrieve predictions" on every task of the project."""
    token = ls.token.get_secret_value()  # type: ignore[union-attr]
    resp = requests.post(
        f"{ls.url}/api/dm/actions/",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        json={"selectedItems": {"all": True, "excluded": []}},
        headers={"Authorization": f"Token {token}"},
        timeout=300,
    )
    resp.raise_for_status()
    return dict(resp.json())


def bootstrap(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``qcloop labelling bootstrap`` with ``settings``: its JSON line."""
    capsys.readouterr()
    assert cmd_bootstrap(argparse.Namespace(), settings) == 0
    return dict(json.loads(capsys.readouterr().out))


def versions_of(ls: LabelStudioSettings, task_id: int) -> dict[str, list[dict[str, Any]]]:
    """A task's predictions by model version."""
    token = ls.token.get_secret_value()  # type: ignore[union-attr]
    found: dict[str, list[dict[str, Any]]] = {}
    for p in task_detail(ls.url, token, task_id)["predictions"]:
        found.setdefault(p["model_version"], []).append(p)
    return found


def test_health_setup_and_predict_over_http_want_the_password(
    settings: Settings, s3_store_settings: StoreSettings, scratch_onnx: Path, tmp_path: Path
) -> None:
    # given a backend with a password, and nothing released yet (no Label Studio here)
    key, public = generate_keypair(tmp_path / "keys")
    settings = backend_settings(settings, settings.label_studio, public, s3_store_settings)
    edge = put_feedback_image(settings, metal_tag_images(1, skip=12)[0], [0.4])
    image = metal_tag_images(1, skip=13)[0].read_bytes()
    with running(settings) as server:
        # then /health is UP, without auth, and says that nothing is released
        health = requests.get(f"{server.url}/health", timeout=5).json()
        assert health == {
            "status": "UP",
            "model_class": "qcloop",
            "model_version": None,
            "released": False,
            "detail": NOT_RELEASED,
        }
        # and every other route refuses a request without the password, or a wrong one
        for auth in (None, ("label-studio", "wrong"), ("someone", PASSWORD)):
            refused = requests.post(
                f"{server.url}/setup", json={"schema": CONFIG}, auth=auth, timeout=5
            )
            assert refused.status_code == 401, auth
            assert refused.headers["WWW-Authenticate"].startswith("Basic")
        # and with it, tasks get no prediction: one empty entry each
        tasks = [{"id": 1, "data": {"raw_key": edge.key, "sha256": edge.sha256}}, {"id": 2}]
        empty = post(server, "/predict", {"tasks": tasks, "label_config": CONFIG}).json()
        assert empty["results"] == [[], []]
        # when a model is released
        release_model(settings, scratch_onnx, key, "7")
        wait_serving(server, "qcloop-detector:7")
        # then /setup names it, and refuses a project that has no rectangles to predict
        setup = post(server, "/setup", {"schema": CONFIG, "project": "1.1"})
        assert setup.json() == {"model_version": "qcloop-detector:7"}
        text_only = "<View><Text name='t' value='$t'/><Choices name='c' toName='t'/></View>"
        refused = post(server, "/setup", {"schema": text_only})
        assert refused.status_code == 400 and "RectangleLabels" in refused.json()["error"]
        # and /predict boxes a raw-store image (by key, sha256 checked) and an inline one
        tasks = [
            {"id": 1, "data": {"raw_key": edge.key, "sha256": edge.sha256}},
            {"id": 2, "data": {"image": data_url(image, "image/jpeg")}},
            {"id": 3, "data": {"raw_key": edge.key, "sha256": "0" * 64}},  # not its bytes
            {"id": 4, "data": {"raw_key": "models/qcloop-detector/released.json"}},
        ]
        results = post(server, "/predict", {"tasks": tasks, "label_config": CONFIG}).json()
        stored, inline, tampered, outside = results["results"]
        for found in (stored, inline):
            assert found["model_version"] == "qcloop-detector:7"
            assert found["result"] and found["score"] > 0
            box = found["result"][0]
            assert (box["from_name"], box["to_name"], box["type"]) == (
                "label",
                "image",
                "rectanglelabels",
            )
            assert (box["original_width"], box["original_height"]) == (450, 300)
            assert box["value"]["rectanglelabels"] == ["scratch"]
        assert tampered == [] and outside == []
        # and more tasks than allowed in one request are refused as too large
        many = [{"id": n} for n in range(settings.label_studio.ml_backend.max_tasks + 1)]
        assert post(server, "/predict", {"tasks": many}).status_code == 413


def test_label_studio_retrieves_the_production_models_boxes_and_refreshes_them(
    settings: Settings,
    ls_settings: LabelStudioSettings,
    s3_store_settings: StoreSettings,
    client: LabelStudioClient,
    project_id: int,
    scratch_onnx: Path,
    other_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given tasks made by sync-in: an edge image (its device's boxes, v3), an imported one
    key, public = generate_keypair(tmp_path / "keys")
    settings = backend_settings(settings, ls_settings, public, s3_store_settings)
    ls = settings.label_studio
    put_feedback_image(settings, metal_tag_images(1, skip=12)[0], [0.4])
    put_feedback_image(settings, metal_tag_images(1, skip=13)[0], [])
    report = sync_in(settings, client, project_id, progress=lambda _: None)
    assert len(report.task_ids) == 2
    # and version 7 in production, served by the backend
    release_model(settings, scratch_onnx, key, "7")
    with running(settings) as server:
        wait_serving(server, "qcloop-detector:7")
        # when `qcloop labelling bootstrap` connects it (twice: the second changes nothing)
        first, again = (bootstrap(settings, capsys)["ml_backend"] for _ in range(2))
        assert (first["action"], again["action"], again["id"]) == (
            "created",
            "unchanged",
            first["id"],
        )
        assert first["model_version"] == "qcloop-detector:7"
        assert client.project(project_id)["model_version"] == ls.ml_backend.title
        # and a labeller presses "Retrieve predictions" in the data manager
        retrieve_predictions(ls, project_id)
        # then every task carries the production model's boxes, stamped with its version
        for task_id in report.task_ids:
            found = versions_of(ls, task_id)
            assert "qcloop-detector:7" in found, found.keys()
            (prediction,) = found["qcloop-detector:7"]
            assert prediction["result"], task_id
            assert {r["value"]["rectanglelabels"][0] for r in prediction["result"]} == {"scratch"}
        # when version 8 (another ONNX) moves into production
        release_model(settings, other_onnx, key, "8", sequence=2, input_size=192)
        wait_serving(server, "qcloop-detector:8")
        retrieve_predictions(ls, project_id)
        # then the predictions are refreshed: each task gets version 8's, once
        for task_id in report.task_ids:
            found = versions_of(ls, task_id)
            assert len(found.get("qcloop-detector:8", [])) == 1, found.keys()
            assert found["qcloop-detector:8"][0]["result"], task_id
            assert len(found["qcloop-detector:7"]) == 1
        # and the labelling stream shows a labeller version 8's boxes, none of older models
        token = ls.token.get_secret_value()  # type: ignore[union-attr]
        shown = requests.get(
            f"{ls.url}/api/projects/{project_id}/next/",
            headers={"Authorization": f"Token {token}"},
            timeout=60,
        ).json()
        assert [p["model_version"] for p in shown["predictions"]] == ["qcloop-detector:8"]
        backends = client.ml_backends(project_id)
        assert [b["model_version"] for b in backends] == ["qcloop-detector:8"]
        listed = requests.get(
            f"{ls.url}/api/ml/{backends[0]['id']}/versions",
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        ).json()
        assert listed == {"versions": ["qcloop-detector:8"]}
        # and Label Studio keeps no webhook to a backend that does not train
        assert not [w for w in client.webhooks(project_id) if w["url"].startswith(server.url)]


class _Recorder(BaseHTTPRequestHandler):
    """Records every request it gets (a place a task's URL points at)."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_a_task_with_an_http_url_is_never_fetched(
    settings: Settings,
    ls_settings: LabelStudioSettings,
    s3_store_settings: StoreSettings,
    client: LabelStudioClient,
    project_id: int,
    scratch_onnx: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a task whose image is an http URL (no raw_key), and a server at that URL
    recorder = ThreadingHTTPServer(("127.0.0.1", free_port()), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{recorder.server_address[1]}/secret.jpg"
    (task_id,) = client.import_tasks(project_id, [{"data": {"image": url}}])
    key, public = generate_keypair(tmp_path / "keys")
    settings = backend_settings(settings, ls_settings, public, s3_store_settings)
    release_model(settings, scratch_onnx, key, "7")
    try:
        with running(settings) as server:
            wait_serving(server, "qcloop-detector:7")
            # (connected the way the chart's pod does it: `ml-backend --register`)
            register_when_ready(settings, threading.Event(), retry_s=1.0)
            # when Label Studio asks the backend for its predictions
            caplog.set_level("WARNING", logger="qcloop_labelling")
            retrieve_predictions(settings.label_studio, project_id)
    finally:
        recorder.shutdown()
        recorder.server_close()
    # then nothing fetched the URL, the task has no prediction, and the log names the task
    assert _Recorder.seen == []
    assert versions_of(settings.label_studio, task_id) == {}
    assert f"task {task_id}: image http://... is not read" in caplog.text


def test_label_studio_refuses_the_backend_with_a_wrong_password(
    settings: Settings,
    ls_settings: LabelStudioSettings,
    s3_store_settings: StoreSettings,
    client: LabelStudioClient,
    project_id: int,
    tmp_path: Path,
) -> None:
    # given a backend that wants its password
    _, public = generate_keypair(tmp_path / "keys")
    settings = backend_settings(settings, ls_settings, public, s3_store_settings)
    ml = settings.label_studio.ml_backend
    with running(settings):
        # when Label Studio is given another password; then it cannot connect it, and says why
        wrong = ml.model_copy(update={"password": SecretStr("not-the-password")})
        with pytest.raises(LabelStudioApiError, match="401"):
            ensure_ml_backend(client, project_id, wrong)
        assert client.ml_backends(project_id) == []

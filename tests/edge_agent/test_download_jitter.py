"""A fleet does not fetch a release from the store all at once: a device serving a model waits
a random 0..release.download_jitter_s before it downloads a new one, and retries a failed
download after a growing, jittered wait."""

from __future__ import annotations

import http.server
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edge_agent.config import EdgeConfig
from edge_agent.fetch import download_delay, model_filename
from edge_agent.release import ModelLoader
from edge_agent.stats import Counters
from edge_agent.store import LazyStore
from edge_agent.trust import ReleaseGate
from qcloop.contracts import ModelRef, ReleaseMessage
from qcloop.settings import StoreSettings
from tests.edge_agent.edge_helpers import (
    make_constant_model,
    release_for,
    release_keys,
    signed,
    taken,
)

V1 = ModelRef(name="scratch-detector", version="1")
V2 = ModelRef(name="scratch-detector", version="2")


def model(tmp_path: Path, n: int) -> Path:
    """A distinct valid model per ``n`` (different bytes, different sha256)."""
    return make_constant_model(tmp_path / f"model{n}.onnx", np.full((1, 84, 10), n / 1000))


def config_for(folder: Path, **release: object) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {
            "device_id": "cam1",
            "fleet": "f",
            "model_dir": folder / "models",
            "source": {"kind": "simulated"},
            "release": {"public_key": release_keys()[1], **release},
            "store": StoreSettings(kind="local", path=folder / "store"),
        }
    )


class Store(http.server.BaseHTTPRequestHandler):
    """Serves ``models`` by path; answers 503 to the first ``failures`` requests; records
    when each request came (``time.monotonic()``)."""

    models: ClassVar[dict[str, bytes]] = {}
    failures: ClassVar[int] = 0
    hits: ClassVar[list[tuple[str, float]]] = []

    def do_GET(self) -> None:
        self.hits.append((self.path, time.monotonic()))
        if len(self.hits) <= self.failures:
            self.send_response(503)
            self.end_headers()
            return
        data = self.models[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def store_url() -> Iterator[str]:
    Store.models, Store.failures, Store.hits = {}, 0, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def served(store_url: str, path: Path, version: str) -> ReleaseMessage:
    """A release of ``path`` whose URL is the test store's."""
    Store.models[f"/{path.name}"] = path.read_bytes()
    return release_for(path, "f", version=version, url=f"{store_url}/{path.name}")


@pytest.fixture
def loaders() -> Iterator[list[ModelLoader]]:
    made: list[ModelLoader] = []
    yield made
    for loader in made:
        loader.close()


def started(config: EdgeConfig, loaders: list[ModelLoader]) -> ModelLoader:
    loader = ModelLoader(config, LazyStore(config.store), Counters(), ReleaseGate(config))
    loader.start()
    loaders.append(loader)
    return loader


def serving_v1(
    tmp_path: Path, folder: Path, loaders: list[ModelLoader], **release: object
) -> ModelLoader:
    """A loader of a device that serves version 1 (a file:// model: no wait)."""
    loader = started(config_for(folder, **release), loaders)
    loader.submit(signed(release_for(model(tmp_path, 1), "f", version="1")))
    assert taken(loader) == V1
    return loader


def test_the_wait_is_drawn_up_to_the_setting_only_for_a_serving_device_and_a_store(
    tmp_path: Path,
) -> None:
    # given a device with download_jitter_s = 5 and a release from an S3 store
    config = config_for(tmp_path, download_jitter_s=5.0)
    path = model(tmp_path, 2)
    from_store = release_for(path, "f", version="2", url="s3://qcloop/models/m/2/model.onnx")
    # when it draws its wait many times while it serves a model
    waits = [download_delay(from_store, config, serving=True) for _ in range(400)]
    # then each is within 0..5 s, and they spread over the whole window
    assert 0.0 <= min(waits) < 0.5 and 4.5 < max(waits) <= 5.0
    assert 2.0 < sum(waits) / len(waits) < 3.0
    # and no wait: nothing served meanwhile, a file:// model, the setting 0, the model on disk
    assert download_delay(from_store, config, serving=False) == 0.0
    local = release_for(path, "f", version="2")
    assert download_delay(local, config, serving=True) == 0.0
    off = config_for(tmp_path, download_jitter_s=0.0)
    assert download_delay(from_store, off, serving=True) == 0.0
    config.model_dir.mkdir(parents=True)
    (config.model_dir / model_filename(from_store)).write_bytes(b"kept")
    assert download_delay(from_store, config, serving=True) == 0.0


@pytest.mark.integration
def test_serving_devices_spread_their_downloads_over_the_window(
    tmp_path: Path, store_url: str, loaders: list[ModelLoader]
) -> None:
    # given 8 devices serving version 1, download_jitter_s = 2
    devices = [
        serving_v1(tmp_path, tmp_path / f"d{i}", loaders, download_jitter_s=2.0) for i in range(8)
    ]
    payload = signed(served(store_url, model(tmp_path, 2), "2"))
    # when version 2 reaches them all at once
    sent = time.monotonic()
    for loader in devices:
        loader.submit(payload)
    # then each fetches and takes it, within the window, and not all at the same moment
    assert [taken(loader) for loader in devices] == [V2] * 8
    starts = sorted(t - sent for _, t in Store.hits)
    assert len(starts) == 8
    assert starts[-1] < 2.0 + 1.0, starts
    assert starts[-1] - starts[0] > 0.3, starts


@pytest.mark.integration
def test_a_device_without_a_model_downloads_at_once(
    tmp_path: Path, store_url: str, loaders: list[ModelLoader]
) -> None:
    # given a device with nothing to serve and a long download_jitter_s
    loader = started(config_for(tmp_path, download_jitter_s=600.0), loaders)
    # when its first release comes
    sent = time.monotonic()
    loader.submit(signed(served(store_url, model(tmp_path, 1), "1")))
    # then it fetches it at once: a box that cannot inspect does not wait its turn
    assert taken(loader) == V1
    assert Store.hits[0][1] - sent < 1.0


@pytest.mark.integration
def test_a_failed_download_is_retried_after_growing_jittered_waits(
    tmp_path: Path, store_url: str, loaders: list[ModelLoader]
) -> None:
    # given a store that answers 503 three times, and retry_s = 0.3
    Store.failures = 3
    loader = started(config_for(tmp_path, retry_s=0.3), loaders)
    # when the device's release comes
    loader.submit(signed(served(store_url, model(tmp_path, 1), "1")))
    # then it gets the model at the fourth try
    assert taken(loader) == V1
    times = [t for _, t in Store.hits]
    assert len(times) == 4
    # after waits drawn in [1/2, 1] of 0.3, 0.6 and 1.2 s (plus the timer's own delay)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, full in zip(gaps, (0.3, 0.6, 1.2), strict=True):
        assert full / 2 - 0.02 <= gap <= full + 0.3, gaps
    assert gaps[2] > gaps[0]


@pytest.mark.integration
def test_closing_ends_the_wait_without_a_download(
    tmp_path: Path, store_url: str, loaders: list[ModelLoader]
) -> None:
    # given a device serving version 1 that waits up to 10 min before a download
    loader = serving_v1(tmp_path, tmp_path / "d", loaders, download_jitter_s=600.0)
    loader.submit(signed(served(store_url, model(tmp_path, 2), "2")))
    time.sleep(0.3)
    # when the agent stops
    begun = time.monotonic()
    loader.close()
    # then the loader ends at once, and nothing was fetched
    assert time.monotonic() - begun < 2.0
    assert Store.hits == []

"""The quickstart's edge box: one running ``qcloop-edge`` agent, watched over MQTT.

The agent runs as a service would, in its own process, for all rounds of the demo: it
reads frames from a hot folder (the camera), takes each release from the broker, and
sends hard frames back to the raw store. The demo learns what it does from what any
platform sees: the retained device state (which model it serves) and the per-frame
results (which model judged a frame, and its feedback key).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from qcloop.contracts import InferenceResult
from qcloop.errors import PipelineError
from qcloop.mqtt import connect, make_client, results_topic, state_topic
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, sidecar_key

log = logging.getLogger(__name__)

DEVICE_ID = "demo-cam-1"


def edge_config(settings: Settings, home: Path, inbox: Path) -> Path:
    """The agent's TOML: the hot folder as camera, the demo's broker and store, and the
    public half of the demo's release key (``release.signing_key`` with ``.pub``)."""
    if settings.release.signing_key is None:
        raise PipelineError("the demo signs its releases: release.signing_key must be set")
    public_key = settings.release.signing_key.with_suffix(".pub")
    path = home / "edge.toml"
    path.write_text(
        f'device_id = "{DEVICE_ID}"\nfleet = "{settings.mqtt.fleet}"\n'
        f'model_dir = "{home / "edge" / "models"}"\nstate_interval_s = 1.0\n\n'
        f'[source]\nkind = "folder"\npath = "{inbox}"\nprocessed = "move"\n'
        "poll_interval_s = 0.2\n\n"
        f'[release]\npublic_key = "{public_key}"\n\n'
        f'[mqtt]\nurl = "{settings.mqtt.url}"\n\n'
        f'[store]\nkind = "local"\npath = "{settings.store.path}"\n'
    )
    return path


class EdgeBox:
    """The agent process, its hot folder, and what it says on the broker."""

    def __init__(self, settings: Settings, home: Path) -> None:
        self.settings = settings
        self.home = home
        self.inbox = home / "edge" / "inbox"
        self.stats_path = home / "edge" / "stats.json"
        self.log_path = home / "edge-agent.log"
        self.results: dict[str, InferenceResult] = {}
        self.serving: str | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: mqtt.Client | None = None

    def start(self, timeout_s: float) -> None:
        """Watch the device's topics, then start the agent (it waits for a release)."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        client = make_client(self.settings.mqtt)
        client.on_connect = lambda c, *_: (
            c.subscribe(state_topic(DEVICE_ID), qos=1),
            c.subscribe(results_topic(DEVICE_ID), qos=1),
        )
        client.on_message = self._on_message
        connect(client, self.settings.mqtt)
        client.loop_start()
        self._client = client
        config = edge_config(self.settings, self.home, self.inbox)
        command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
        command += ["--timeout", str(int(timeout_s)), "--stats-out", str(self.stats_path)]
        with open(self.log_path, "wb") as out:
            self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            payload: dict[str, Any] = json.loads(msg.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        with self._changed:
            if msg.topic.endswith("/results"):
                result = InferenceResult.model_validate(payload)
                self.results[result.image] = result
            else:
                self.serving = (payload.get("model") or {}).get("version")
            self._changed.notify_all()

    def _wait(self, what: str, done: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done():
                if self._proc is not None and self._proc.poll() is not None:
                    raise PipelineError(f"the edge agent exited while {what}: {self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PipelineError(f"timed out after {timeout_s:.0f} s {what}: {self._tail()}")
                self._changed.wait(min(left, 0.5))

    def wait_serving(self, version: str, timeout_s: float = 120.0) -> None:
        """Until the device says it serves model ``version``."""
        self._wait(
            f"waiting for the agent to serve v{version}", lambda: self.serving == version, timeout_s
        )

    def show(self, frames: list[Path], timeout_s: float = 300.0) -> list[InferenceResult]:
        """Drop ``frames`` into the hot folder (write + rename: atomic); their results."""
        for frame in frames:
            part = self.inbox / f".{frame.name}.part"
            shutil.copyfile(frame, part)
            part.rename(self.inbox / frame.name)
        names = [frame.name for frame in frames]
        self._wait(
            f"waiting for the results of {len(frames)} frames",
            lambda: all(n in self.results for n in names),
            timeout_s,
        )
        with self._lock:
            return [self.results[n] for n in names]

    def wait_uploaded(self, store: ObjectStore, keys: list[str], timeout_s: float = 120.0) -> None:
        """Until every feedback image of ``keys`` (and its sidecar) is in the raw store."""
        deadline = time.monotonic() + timeout_s
        while not all(store.exists(sidecar_key(k)) for k in keys):
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"feedback not uploaded after {timeout_s:.0f} s: {self._tail()}"
                )
            time.sleep(0.2)

    def stop(self, *, check: bool = True) -> dict[str, Any]:
        """Stop the agent as systemd would (SIGTERM); its stats (``check``: raise
        ``PipelineError`` unless it stopped cleanly)."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        proc, self._proc = self._proc, None
        if proc is None:
            return {}
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not check:
            return {}
        if proc.returncode != 0 or not self.stats_path.exists():
            raise PipelineError(f"edge agent exited with {proc.returncode}: {self._tail()}")
        return dict(json.loads(self.stats_path.read_text()))

    def _tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"see {self.log_path}" + (f"; it ends:\n{text[-1500:]}" if text else "")

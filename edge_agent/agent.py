"""The inspection loop: frames in, detections out, hard frames back to the raw store.

    source --frame--> Detector --InferenceResult--> MQTT results
                          \\--best score < feedback_below--> FeedbackUploader -> raw store
    MQTT release --> ModelLoader (download, verify, load, smoke-test) --ready--> swap

The loop itself never waits on the network: releases are loaded and feedback is
uploaded by their own threads, and a new model is swapped in between two frames
only once it is fully loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edge_agent.config import EdgeConfig, SourceConfig
from edge_agent.errors import ImageError, ModelError
from edge_agent.feedback import FeedbackUploader, build_sidecar
from edge_agent.inference import load_image
from edge_agent.link import MqttLink
from edge_agent.release import ModelLoader, ServingModel, load_local, prune_models
from edge_agent.sources import FolderSource, Frame, FrameSource, SimulatedCameraSource
from edge_agent.stats import AgentStats, Counters, DeviceState, Status
from edge_agent.store import LazyStore
from qcloop.contracts import InferenceResult, ModelRef, utcnow

log = logging.getLogger(__name__)

TICK_S = 0.2  # longest the loop waits before it looks at stop/deadline/swap again


def make_source(config: SourceConfig) -> FrameSource:
    """The frame source the config asks for."""
    if config.kind == "simulated":
        return SimulatedCameraSource(seed=config.seed, interval_s=config.interval_s)
    assert config.path is not None  # guaranteed by SourceConfig
    return FolderSource(
        config.path,
        policy=config.processed,
        processed_dir=config.processed_dir,
        rejected_dir=config.rejected_dir,
        poll_interval_s=config.poll_interval_s,
    )


class Agent:
    """One edge device: ``run()`` inspects until stopped, a frame count or a timeout."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        source: FrameSource | None = None,
        initial_model: Path | None = None,
    ) -> None:
        self.config = config
        self.source = source if source is not None else make_source(config.source)
        self._counters = Counters()
        self._store = LazyStore(config.store)
        self._stop = threading.Event()
        self._serving: ServingModel | None = None
        self._previous: ServingModel | None = None
        self._status: Status = "starting"
        self._since = utcnow()
        self._initial_model = Path(initial_model) if initial_model else None

    def __repr__(self) -> str:
        return f"Agent(device_id={self.config.device_id!r}, source={self.source!r})"

    @property
    def serving_model(self) -> ModelRef | None:
        """Name and version of the model in use, if any."""
        serving = self._serving
        return serving.ref if serving else None

    def stats(self) -> AgentStats:
        """Totals so far (safe to call from another thread)."""
        return self._counters.snapshot(self.serving_model)

    def stop(self) -> None:
        """Ask ``run`` to return after the current frame (signal-handler safe)."""
        self._stop.set()

    def run(self, max_frames: int | None = None, timeout_s: float | None = None) -> AgentStats:
        """Inspect frames until ``stop()``, ``max_frames`` inferred or ``timeout_s`` passed.

        A ``--model`` that does not load raises ``ModelError`` before anything starts.
        """
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        initial = load_local(self._initial_model, self.config) if self._initial_model else None
        self.config.model_dir.mkdir(parents=True, exist_ok=True)
        loader = ModelLoader(self.config, self._store, self._counters)
        link = MqttLink(self.config, on_release=loader.submit)
        feedback = self._make_uploader()
        link.start()
        self._publish_state(link, "starting")
        loader.start()
        feedback.start()
        try:
            if initial is not None:
                self._install(initial, loader, link, counted=False)
            else:
                self._publish_state(link, "waiting_for_model")
            self._loop(loader, link, feedback, max_frames, deadline)
        finally:
            feedback.close(self.config.feedback.drain_timeout_s)
            loader.close()
            link.close(self._state("offline"))
        stats = self.stats()
        log.info("agent stopped", extra=stats.model_dump(mode="json"))
        return stats

    def _make_uploader(self) -> FeedbackUploader:
        settings = self.config.feedback
        return FeedbackUploader(
            self._store,
            self._counters,
            queue_size=settings.queue_size,
            max_attempts=settings.max_attempts,
            retry_delay_s=settings.retry_delay_s,
        )

    def _loop(
        self,
        loader: ModelLoader,
        link: MqttLink,
        feedback: FeedbackUploader,
        max_frames: int | None,
        deadline: float | None,
    ) -> None:
        next_state = time.monotonic() + self.config.state_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if max_frames is not None and self._counters.get("frames_inferred") >= max_frames:
                break
            tick = TICK_S if deadline is None else max(0.0, min(TICK_S, deadline - now))
            ready = loader.take_ready()
            if ready is not None:
                self._install(ready, loader, link, counted=True)
            if self._serving is None:
                loader.wait_ready(tick)  # frames stay where they are until a model arrives
                continue
            frame = self.source.next_frame(tick)
            if frame is not None:
                self._process(frame, link, feedback)
            if time.monotonic() >= next_state:
                self._publish_state(link, self._status)
                next_state = time.monotonic() + self.config.state_interval_s

    def _install(
        self, model: ServingModel, loader: ModelLoader, link: MqttLink, *, counted: bool
    ) -> None:
        """Swap ``model`` in (between two frames: the loop is not inside ``_process``)."""
        if self._serving is not None and self._serving.path != model.path:
            self._previous = self._serving
        self._serving, self._since = model, utcnow()
        loader.serving(model)
        if counted:
            self._counters.add("swaps")
        log.info("serving model", extra={"model": model.ref.name, "version": model.ref.version})
        keep = {m.path for m in (self._serving, self._previous) if m is not None}
        if model.path.parent.resolve() == self.config.model_dir.resolve():
            prune_models(self.config.model_dir, keep)
        self._publish_state(link, "serving")

    def _process(self, frame: Frame, link: MqttLink, feedback: FeedbackUploader) -> None:
        serving = self._serving
        assert serving is not None
        try:
            image = load_image(frame.data)
        except ImageError as exc:
            self._counters.add("errors")
            self.source.reject(frame, str(exc))
            return
        started = time.perf_counter()
        try:
            detections = serving.detector.detect(image)
        except ModelError as exc:  # the file stays where it is, the loop goes on
            self._counters.add("errors")
            log.error("inference failed", extra={"frame": frame.name, "error": str(exc)})
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        feedback_key = None
        best = max((d.score for d in detections), default=0.0)
        if self.config.feedback.enabled and best < serving.thresholds.feedback_below:
            sidecar = build_sidecar(
                frame.data,
                image,
                device_id=self.config.device_id,
                frame_name=frame.name,
                model=serving.ref,
                predictions=detections,
            )
            feedback.submit(frame.data, sidecar)
            feedback_key = sidecar.key  # content-addressed: known before the upload ends
        result = InferenceResult(
            device_id=self.config.device_id,
            image=Path(frame.name).name,
            model=serving.ref,
            detections=detections,
            latency_ms=latency_ms,
            feedback_key=feedback_key,
        )
        link.publish_result(result.to_json())
        self._counters.add("frames_inferred")
        self.source.done(frame)

    def _state(self, status: Status) -> DeviceState:
        if status != self._status:
            self._status, self._since = status, utcnow()
        return DeviceState(
            status=status,
            device_id=self.config.device_id,
            fleet=self.config.fleet,
            model=self.serving_model,
            since=self._since,
            frames=self._counters.get("frames_inferred"),
        )

    def _publish_state(self, link: MqttLink, status: Status) -> None:
        link.publish_state(self._state(status))

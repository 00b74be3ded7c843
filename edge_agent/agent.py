"""The inspection loop: frames in, detections out, hard frames back to the raw store.

    source --frame--> prefetch thread (decode) --> inference workers (letterbox, model, NMS)
           --in frame order--> InferenceResult --> MQTT results
                          \\--feedback policy (policies)--> spool (disk) --> raw store
    MQTT verdict --> VerdictInbox (last frames) --operator_verdict--> spool
    MQTT release (fleet or device) --> ModelLoader (verify, load, smoke-test) --ready--> swap
    swap --> on trial (trial) --N frames, T seconds--> good (last-good.json) | rejected

The loop itself never waits on the network: releases are loaded and the spool is
uploaded by their own threads, and a new model is swapped in between two frames
only once it is fully loaded (frames already in flight finish on the model they
started on). With ``inference_workers`` > 1 several frames are inferred at once, and
one more waits ready for whichever worker is done first; their results, feedback and
``done`` still go out in frame order. A new model is
on trial until it has served (``edge_agent.trial``); one that fails
``release.max_model_failures`` frames in a row is rolled back to the previous one,
one the agent died with on trial is rejected at the next start: neither is loaded
again (``rejected-models.json``). At start the agent serves the newest good model
on disk (``last-good.json``), so it inspects before - or without - the broker.
Under systemd it reports READY/WATCHDOG/STOPPING (``sdnotify``); every
``state_interval_s`` it publishes its retained state (heartbeat).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from PIL import Image

from edge_agent.config import EdgeConfig
from edge_agent.errors import ModelError
from edge_agent.feedback import FeedbackUploader, build_sidecar, make_uploader
from edge_agent.guard import DecodeGuard, set_aside_culprit
from edge_agent.health import Health
from edge_agent.inference import InputPlan
from edge_agent.inflight import InFlight, infer_now, infer_timed
from edge_agent.link import MqttLink
from edge_agent.memory import set_up_heap, trim_heap
from edge_agent.metrics import serve_metrics
from edge_agent.policies import FeedbackPolicies, dhash
from edge_agent.prefetch import Prefetcher
from edge_agent.release import (
    ModelLoader,
    ModelOnDisk,
    ServingModel,
    load_last_good,
    load_local,
)
from edge_agent.resize import resizer
from edge_agent.retention import Retention, set_aside_folders
from edge_agent.sdnotify import Watchdog, notify
from edge_agent.sources import Frame, FrameSource, make_source
from edge_agent.stats import AgentStats, Counters
from edge_agent.store import LazyStore
from edge_agent.trial import Trial
from edge_agent.trust import ReleaseGate
from edge_agent.verdicts import VerdictInbox
from qcloop.contracts import Detection, InferenceResult, ModelRef, utcnow
from qcloop.devices import DeviceState, Status
from qcloop.errors import QcloopError
from qcloop.storage import sha256_bytes

log = logging.getLogger(__name__)

TICK_S = 0.2  # longest the loop waits before it looks at stop/deadline/swap again
POLL_S = 0.002  # with frames in flight: how long to wait for a new frame before a result


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
        self._store = LazyStore(config.store, timeout_s=config.feedback.store_timeout_s)
        self._stop = threading.Event()
        self._serving: ServingModel | None = None
        self._previous: ModelOnDisk | None = None  # on disk only: reloaded to roll back
        self._trim = False  # a replaced model's memory is to be given back
        self._failures = 0  # consecutive inference failures of the serving model
        self._status: Status = "starting"
        self._since = utcnow()
        self._initial_model = Path(initial_model) if initial_model else None
        self.policies = FeedbackPolicies(config.feedback)
        self._health = Health(config, self._counters, self.policies)
        self._health.trial = self._trial = Trial(config, self._counters)
        self.verdicts = VerdictInbox(config.verdicts, self._counters, config.device_id)

    def __repr__(self) -> str:
        return f"Agent(device_id={self.config.device_id!r}, source={self.source!r})"

    @property
    def serving_model(self) -> ModelRef | None:
        """Name and version of the model in use, if any."""
        serving = self._serving
        return serving.ref if serving else None

    def stats(self) -> AgentStats:
        """Totals so far (safe to call from another thread)."""
        return self._counters.snapshot(self.serving_model, self.policies.counts())

    def stop(self) -> None:
        """Ask ``run`` to return after the current frame (signal-handler safe)."""
        self._stop.set()

    def run(self, max_frames: int | None = None, timeout_s: float | None = None) -> AgentStats:
        """Inspect frames until ``stop()``, ``max_frames`` inferred or ``timeout_s`` passed.

        A bad ``release.public_key``/``public_keys`` or ``--model`` raises before anything
        starts (``release.insecure_unsigned`` logs a warning).
        """
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        set_up_heap()  # before the agent's threads start: they would each get an arena
        gate, rejected = ReleaseGate(self.config), self._trial.rejected
        initial = load_local(self._initial_model, self.config) if self._initial_model else None
        self.config.model_dir.mkdir(parents=True, exist_ok=True)
        self._trial.recover()  # a model on trial when the last run died: rejected
        if initial is None:
            initial = load_last_good(self.config, gate, self._counters, rejected)
        feedback = make_uploader(self.config, self._store, self._counters)
        self._health.spool = spool = feedback.spool
        loader = ModelLoader(self.config, self._store, self._counters, gate, rejected)
        if initial is not None:  # before any retained release can reach the loader
            loader.serving(initial)
        self._health.loader = loader
        on_verdict = self.verdicts.receive if self.config.verdicts.enabled else None
        link = MqttLink(self.config, loader.submit, on_verdict, self._counters)
        guard = DecodeGuard.in_state_dir(self.config.state_dir)
        set_aside_culprit(guard, self.source, self._counters)  # a frame the last run died on
        frames = Prefetcher(
            self.source,
            self._input_plan,
            self.config.prefetch_frames,
            TICK_S,
            max_pixels=self.config.source.max_pixels,
            guard=guard,
            prepare=self.config.inference_workers == 1,  # else each worker prepares its own
        )
        retention = Retention(set_aside_folders(self.source, spool.bad_dir), self.config.retention)
        retention.start()
        link.start()
        self._publish_state(link, "starting")
        loader.start()
        feedback.start()
        metrics = serve_metrics(self._health, lambda: self._serving, link)  # none unless on
        try:
            if initial is not None:
                self._install(initial, loader, link, counted=False)
                initial = None  # this frame lives as long as the agent: hold no model here
            else:
                self._publish_state(link, "waiting_for_model")
            notify("READY=1")
            frames.start()
            self._loop(frames, loader, link, feedback, max_frames, deadline)
            self._trial.end()  # a clean stop: no verdict on a model on trial
        finally:
            notify("STOPPING=1")
            frames.close()
            feedback.close(self.config.feedback.drain_timeout_s)
            loader.close()
            link.close(self._state("offline"))
            retention.close()
            metrics.close()
        stats = self.stats()
        log.info("agent stopped", extra=stats.model_dump(mode="json"))
        return stats

    def _input_plan(self) -> InputPlan | None:
        """Input plan of the serving model (read by the prefetch thread)."""
        serving = self._serving
        return serving.detector.plan if serving else None

    def _loop(
        self,
        frames: Prefetcher,
        loader: ModelLoader,
        link: MqttLink,
        feedback: FeedbackUploader,
        max_frames: int | None,
        deadline: float | None,
    ) -> None:
        workers = self.config.inference_workers
        pool = ThreadPoolExecutor(workers, "qcloop-infer") if workers > 1 else None
        # with workers, one frame more waits in the pool's queue: a worker that is done
        # takes it at once instead of idling until this loop has published the oldest
        # result (or, if its frame overtook an older one, until that one is done)
        depth = workers + 1 if pool is not None else 1
        inflight: deque[InFlight] = deque()  # oldest first: results go out in frame order

        def finish(block: float) -> None:
            """Finish the frames whose model is done, oldest first (wait ``block`` s for one)."""
            if inflight and block > 0:
                wait([inflight[0].outcome], timeout=block)
            while inflight and inflight[0].outcome.done():
                self._process(inflight.popleft(), loader, link, feedback)

        watchdog = Watchdog()
        next_state = time.monotonic() + self.config.state_interval_s
        try:
            while not self._stop.is_set():
                watchdog.tick()
                now = time.monotonic()
                finish(0.0)
                self._trial.check(self._serving)
                if self._trim and all(f.serving is self._serving for f in inflight):
                    # no frame in flight holds a replaced model any more (a busy camera
                    # with two workers may never leave the queue empty)
                    trim_heap()
                    self._trim = False
                if deadline is not None and now >= deadline:
                    break
                inferred = self._counters.get("frames_inferred")
                if max_frames is not None and inferred >= max_frames:
                    break
                if now >= next_state:
                    self._publish_state(link, self._status)
                    next_state = now + self.config.state_interval_s
                tick = TICK_S if deadline is None else max(0.0, min(TICK_S, deadline - now))
                ready = loader.take_ready()
                if ready is not None:  # frames in flight finish on the model they started on
                    self._install(ready, loader, link, counted=True)
                self.verdicts.drain(feedback)
                serving = self._serving
                if serving is None:
                    loader.wait_ready(tick)  # frames stay where they are until a model arrives
                    continue
                full = len(inflight) >= depth
                if full or (max_frames is not None and inferred + len(inflight) >= max_frames):
                    finish(tick)
                    continue
                item = frames.next(POLL_S if inflight else tick)
                if item is None:
                    finish(POLL_S)
                    continue
                if item.image is None:  # not an image, too large, empty: set aside, in order
                    while inflight:
                        finish(TICK_S)
                    self._counters.add("frames_rejected")
                    self.source.reject(item.frame, item.error or "not decoded")
                    continue
                if pool is not None:
                    outcome = pool.submit(infer_timed, item, serving)
                else:
                    outcome = infer_now(item, serving)
                inflight.append(InFlight(item, serving, outcome))
        finally:
            while inflight:  # every frame handed to a model gets its result out
                finish(TICK_S * 50)
            if pool is not None:
                pool.shutdown(wait=True)

    def _install(
        self, model: ServingModel, loader: ModelLoader, link: MqttLink, *, counted: bool
    ) -> None:
        """Swap ``model`` in (between two frames: the loop is not inside ``_process``), on
        trial if new: its trial is on disk first, or it is not swapped in."""
        if not self._trial.begin(model):
            return
        if self._serving is not None and self._serving.path != model.path:
            self._previous = ModelOnDisk.of(self._serving)
            self._trim = True
        self._serving, self._since, self._failures = model, utcnow(), 0
        loader.serving(model)
        if counted:
            self._counters.add("swaps")
        extra = {"model": model.ref.name, "version": model.ref.version, "resize": resizer()}
        log.info("serving model", extra=extra)
        self._publish_state(link, "serving")

    def _rollback(self, loader: ModelLoader, link: MqttLink) -> None:
        """The serving model keeps failing: back to the previous one, never to this again."""
        failing = self._serving
        assert failing is not None
        self._trial.reject(failing, self._failures)
        previous, self._previous = self._previous, None
        log.error(
            "model keeps failing, rolling back",
            extra={
                "model": failing.ref.name,
                "version": failing.ref.version,
                "to": previous.ref.version if previous else None,
            },
        )
        self._counters.add("rollbacks")
        self._serving = None  # so that the failing model does not become the fallback
        reopened = self._reopen(previous) if previous is not None else None
        if reopened is None:
            self._publish_state(link, "waiting_for_model")
            return
        self._install(reopened, loader, link, counted=True)

    def _reopen(self, previous: ModelOnDisk) -> ServingModel | None:
        """Load the model to roll back to from its (verified) file; None if it cannot be."""
        try:
            return previous.reopen(self.config)
        except (QcloopError, OSError) as exc:  # ModelError, IntegrityError, file gone
            self._counters.add("errors")
            log.error(
                "cannot reload the previous model",
                extra={"version": previous.ref.version, "error": str(exc)},
            )
            return None

    def _process(
        self, flight: InFlight, loader: ModelLoader, link: MqttLink, feedback: FeedbackUploader
    ) -> None:
        """A frame whose model run is over: failures and rollback, feedback, result, done."""
        serving, frame, image = flight.serving, flight.item.frame, flight.item.image
        assert image is not None
        try:
            detections, latency_ms = flight.outcome.result()
        except ModelError as exc:  # the file stays where it is, the loop goes on
            self._counters.add("errors")
            log.error("inference failed", extra={"frame": frame.name, "error": str(exc)})
            if serving is self._serving:  # not a frame still in flight on a replaced model
                self._failures += 1
                self._trial.frame(ok=False)
                if self._failures >= self.config.release.max_model_failures:
                    self._rollback(loader, link)
            return
        if serving is self._serving:
            self._failures = 0
            self._trial.frame(ok=True)
        self._health.throughput.add(latency_ms)
        self._counters.add("frames_inferred")
        if self.config.verdicts.enabled:
            self.verdicts.remember(frame.name, frame.data, detections, serving.ref)
        feedback_key = self._feedback(frame, image, serving, detections, feedback)
        result = InferenceResult(
            device_id=self.config.device_id,
            image=Path(frame.name).name,
            model=serving.ref,
            detections=detections,
            latency_ms=latency_ms,
            feedback_key=feedback_key,
        )
        link.publish_result(result.to_json())
        self.source.done(frame)

    def _feedback(
        self,
        frame: Frame,
        image: Image.Image,
        serving: ServingModel,
        detections: list[Detection],
        feedback: FeedbackUploader,
    ) -> str | None:
        """Spool the frame if a policy wants it; its raw-store key, known before upload."""
        if not self.config.feedback.enabled:
            return None
        decision = self.policies.decide(
            sha256_bytes(frame.data),
            detections,
            serving.thresholds,
            self._counters.get("frames_inferred"),
            lambda: dhash(image),
        )
        if decision is None:
            return None
        sidecar = build_sidecar(
            frame.data,
            image,
            device_id=self.config.device_id,
            frame_name=frame.name,
            model=serving.ref,
            predictions=detections,
            reason=decision.reason,
        )
        if not feedback.submit(frame.data, sidecar):
            return None
        self._counters.add_reason(decision.reason)
        return sidecar.key

    def _state(self, status: Status) -> DeviceState:
        if status != self._status:
            self._status, self._since = status, utcnow()
        return self._health.state(status, self._since, self.serving_model)

    def _publish_state(self, link: MqttLink, status: Status) -> None:
        link.publish_state(self._state(status))

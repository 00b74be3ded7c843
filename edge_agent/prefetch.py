"""Decode the next frames on a second thread while the model runs on the inspection thread.

    source --next_frame--> [prefetch thread: read, decode (, letterbox, normalise)]
           --bounded queue (``prefetch_frames``)--> inference: (letterbox, normalise,)
           session.run, NMS --> publish

Pillow's decoder, numpy's resize and copies and onnxruntime's ``run`` all release
the GIL, so on a 2-core box the next frame is made ready on one core while the
current one is inferred on the other. With one inference worker the thread also
prepares the model input (``prepare``); with several, each worker prepares its own
frame into its own reused tensor, right before it runs the model (no frame-sized
block made and given back per frame, and the tensor is in the core's cache when the
model reads it: measured 1.5-2 ms a frame less with two workers on two cores).
The queue is bounded: the thread never reads more than
``depth`` frames ahead, and a frame read ahead but not inferred when the agent
stops is not marked done, so a hot-folder file stays for the next start.

The thread prepares for the input plan (size, stride) of the model serving when
it reads the frame; after a swap to a model with another plan the inspection
thread prepares the few frames already queued again (``Prefetched.for_model``). Errors stay with
their frame (``error``): the inspection thread rejects it, in order. A frame of more than
``max_pixels`` is refused from its header; a ``DecodeGuard`` marks each frame while it is
decoded, so one that kills the agent is set aside at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from PIL import Image

from edge_agent.errors import ImageError
from edge_agent.guard import DecodeGuard
from edge_agent.inference import InputPlan, ModelInput, load_image, prepare_input
from edge_agent.sources import Frame, FrameSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prefetched:
    """A frame, decoded (or why not), with its model input if a model's plan was known."""

    frame: Frame
    image: Image.Image | None = None
    prepared: ModelInput | None = None
    error: str | None = None

    def for_model(self, plan: InputPlan) -> ModelInput:
        """The model input for ``plan``: the one prepared ahead, or made now from the
        decoded image (not prepared ahead, or after a swap to a model of another input
        plan), in this thread's reused tensor: for a frame inferred right away."""
        assert self.image is not None, "a frame that failed to decode has no input"
        if self.prepared is not None and self.prepared.plan == plan:
            return self.prepared
        return prepare_input(self.image, plan, reuse=True)


def prefetch(
    frame: Frame,
    plan: InputPlan | None,
    max_pixels: int | None = None,
    guard: DecodeGuard | None = None,
) -> Prefetched:
    """Decode ``frame`` and, if the model's ``plan`` is known, prepare the model input."""
    if frame.rejected is not None:  # the source refused it unread
        return Prefetched(frame, error=frame.rejected)
    try:
        with guard.decoding(frame) if guard is not None else nullcontext():
            image = load_image(frame.data, max_pixels=max_pixels)
    except ImageError as exc:
        return Prefetched(frame, error=str(exc))
    prepared = prepare_input(image, plan) if plan is not None else None
    return Prefetched(frame, image=image, prepared=prepared)


class Prefetcher:
    """Reads and prepares up to ``depth`` frames ahead of the inspection thread.

    ``depth`` 0 keeps everything on the caller's thread (``next`` reads and
    prepares the frame itself). ``plan`` is asked for the current model's input
    plan each time a frame is prepared; with ``prepare`` False frames are only decoded
    (the inference workers prepare them: ``Prefetched.for_model``).
    """

    def __init__(
        self,
        source: FrameSource,
        plan: Callable[[], InputPlan | None],
        depth: int,
        tick_s: float,
        *,
        max_pixels: int | None = None,
        guard: DecodeGuard | None = None,
        prepare: bool = True,
    ) -> None:
        self.source = source
        self.depth = depth
        self._max_pixels = max_pixels
        self._guard = guard
        self._plan = plan if prepare else lambda: None
        self._tick = tick_s
        self._queue: queue.Queue[Prefetched] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0  # unexpected failures of the source (logged, then retried)

    def start(self) -> None:
        """Start the prefetch thread (a no-op with ``depth`` 0)."""
        if self.depth > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qcloop-prefetch", daemon=True)
            self._thread.start()

    def next(self, timeout: float) -> Prefetched | None:
        """The next frame, ready for the model, or None if none within ``timeout`` s."""
        if self._thread is None:
            frame = self._read(timeout)
            return self._prepare(frame) if frame is not None else None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading ahead; frames still queued were never inferred (not marked done)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _prepare(self, frame: Frame) -> Prefetched:
        return prefetch(frame, self._plan(), self._max_pixels, self._guard)

    def _read(self, timeout: float) -> Frame | None:
        try:
            return self.source.next_frame(timeout)
        except Exception as exc:  # a source must not stop inspection; it should not raise
            self.errors += 1
            log.error("frame source failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._stop.wait(self._tick)
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self._read(self._tick)
            if frame is None:
                continue
            try:
                item = self._prepare(frame)
            except Exception as exc:  # a bug in preparing must not kill the thread
                item = Prefetched(frame, error=f"cannot prepare: {type(exc).__name__}: {exc}")
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=self._tick)
                    break
                except queue.Full:
                    continue

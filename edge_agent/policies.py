"""Which inspected frames go back to the raw store: feedback policies, limits, de-duplication.

Pure decisions (no I/O, microseconds per frame). In order, the first policy that
matches the frame and is within its own limits sends it:

    defects  a box scoring >= min_score          reason 'sampling' (no closer reason exists)
    band     best score in [low, high]           reason 'low_confidence'
             (default: best < thresholds.feedback_below, the classic rule)
    count    >= min_detections boxes             reason 'sampling'
    random   with probability ``share``          reason 'sampling'
    every    every ``sample_every``-th frame     reason 'sampling' (no limits)

A frame whose sha256 was sent within ``dedup_window_s`` is not sent again. With
``near_duplicate_bits`` > 0 a frame whose 64-bit difference hash (``dhash``) is
within that many bits of a recently sent one is not sent either: for a camera
that sees the same part standing still. It is off by default because on thin,
low-contrast defects it is wrong: pairs of metal tags with different scratches
(or none) are 0-4 bits apart, while the same frame with sensor noise and another
JPEG encoding moves up to 8 (docs/edge.md). Limits are sliding windows on a
monotonic clock that tests inject.
"""

from __future__ import annotations

import random
import threading
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge_agent.config import FeedbackConfig, RateLimits
from qcloop.contracts import CaptureReason, Detection, Thresholds

Clock = Callable[[], float]
WINDOWS = (("per_minute", 60.0), ("per_hour", 3600.0), ("per_day", 86400.0))
OUTCOMES = ("sent", "limited", "deduplicated")


class RateLimiter:
    """Sliding-window counts per minute / hour / day; memory bounded by the largest limit."""

    def __init__(self, limits: RateLimits, clock: Clock) -> None:
        self._windows = [
            (seconds, limit)
            for name, seconds in WINDOWS
            if (limit := getattr(limits, name)) is not None
        ]
        self._clock = clock
        self._sent: deque[float] = deque()

    def allow(self) -> bool:
        """True (and counted) if one more send fits every window."""
        if not self._windows:
            return True
        now = self._clock()
        longest = max(seconds for seconds, _ in self._windows)
        while self._sent and self._sent[0] <= now - longest:
            self._sent.popleft()
        for seconds, limit in self._windows:
            if len(self._sent) - bisect_right(self._sent, now - seconds) >= limit:
                return False
        self._sent.append(now)
        return True


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: is each of 8x8 grey cells brighter than its left neighbour."""
    small = image.convert("L").resize((9, 8), Image.Resampling.BILINEAR, reducing_gap=2.0)
    cells = np.asarray(small, dtype=np.int16)
    return int.from_bytes(np.packbits(cells[:, 1:] > cells[:, :-1]).tobytes(), "big")


Fingerprint = Callable[[], int]


class Deduplicator:
    """Remembers frames sent within ``window_s``: sha256 (at most ``max_entries``) and,
    with ``near_bits`` > 0, the dHash of the last ``near_recent`` of them."""

    def __init__(
        self,
        window_s: float,
        max_entries: int,
        clock: Clock,
        *,
        near_bits: int = 0,
        near_recent: int = 1000,
    ) -> None:
        self.window_s, self.max_entries = window_s, max_entries
        self.near_bits = near_bits
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._hashes: deque[tuple[float, int]] = deque(maxlen=near_recent)

    def _expire(self) -> None:
        oldest = self._clock() - self.window_s
        while self._seen and next(iter(self._seen.values())) <= oldest:
            self._seen.popitem(last=False)
        while self._hashes and self._hashes[0][0] <= oldest:
            self._hashes.popleft()

    def seen(self, sha256: str, fingerprint: int | None = None) -> bool:
        """True if ``sha256`` - or a frame within ``near_bits`` of ``fingerprint`` - was
        sent within the window."""
        if self.window_s <= 0:
            return False
        self._expire()
        if sha256 in self._seen:
            return True
        if fingerprint is None or not self.near_bits or not self._hashes:
            return False
        sent = np.fromiter((h for _, h in self._hashes), np.uint64, len(self._hashes))
        distance = np.bitwise_count(sent ^ np.uint64(fingerprint))
        return bool(distance.min() <= self.near_bits)

    def remember(self, sha256: str, fingerprint: int | None = None) -> None:
        """``sha256`` (with its ``fingerprint``) was just sent."""
        if self.window_s <= 0:
            return
        now = self._clock()
        self._seen[sha256] = now
        self._seen.move_to_end(sha256)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        if fingerprint is not None and self.near_bits:
            self._hashes.append((now, fingerprint))


@dataclass(frozen=True)
class Decision:
    """A frame to send: which policy, with which sidecar reason."""

    policy: str
    reason: CaptureReason


class FeedbackPolicies:
    """``decide`` per frame; per-policy sent/limited/deduplicated counts for the heartbeat."""

    def __init__(
        self,
        config: FeedbackConfig,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        policies = config.policies
        self._rng = rng if rng is not None else random.Random(policies.random.seed)
        self._limiters = {
            name: RateLimiter(getattr(policies, name), clock)
            for name in ("defects", "band", "count", "random")
        }
        self._dedup = Deduplicator(
            policies.dedup_window_s,
            policies.dedup_max_entries,
            clock,
            near_bits=policies.near_duplicate_bits,
            near_recent=policies.near_duplicate_recent,
        )
        self._lock = threading.Lock()  # counts are read by the heartbeat
        self._counts = {name: dict.fromkeys(OUTCOMES, 0) for name in [*self._limiters, "every"]}

    def decide(
        self,
        sha256: str,
        detections: list[Detection],
        thresholds: Thresholds,
        frame_number: int,
        fingerprint: Fingerprint | None = None,
    ) -> Decision | None:
        """The policy that sends this frame, or None (counted either way).

        ``fingerprint`` gives the frame's ``dhash``; it is called only for a frame
        some policy would send, and only when near-duplicates are looked for.
        """
        near = None
        for decision in self._matching(detections, thresholds, frame_number):
            if near is None and fingerprint is not None and self._dedup.near_bits:
                near = fingerprint()
            if self._dedup.seen(sha256, near):
                self._count(decision.policy, "deduplicated")
                return None
            limiter = self._limiters.get(decision.policy)
            if limiter is not None and not limiter.allow():
                self._count(decision.policy, "limited")
                continue
            self._dedup.remember(sha256, near)
            self._count(decision.policy, "sent")
            return decision
        return None

    def _matching(
        self, detections: list[Detection], thresholds: Thresholds, frame_number: int
    ) -> list[Decision]:
        policies = self.config.policies
        best = max((d.score for d in detections), default=0.0)
        matched: list[Decision] = []
        defects = policies.defects
        floor = thresholds.confidence if defects.min_score is None else defects.min_score
        if defects.enabled and any(d.score >= floor for d in detections):
            matched.append(Decision("defects", "sampling"))
        band = policies.band
        in_band = (
            best < thresholds.feedback_below if band.high is None else band.low <= best <= band.high
        )
        if band.enabled and in_band:
            matched.append(Decision("band", "low_confidence"))
        if policies.count.min_detections and len(detections) >= policies.count.min_detections:
            matched.append(Decision("count", "sampling"))
        share = policies.random.share
        if share and self._rng.random() < share:
            matched.append(Decision("random", "sampling"))
        every = self.config.sample_every
        if every and frame_number % every == 0:
            matched.append(Decision("every", "sampling"))
        return matched

    def _count(self, policy: str, outcome: str) -> None:
        with self._lock:
            self._counts[policy][outcome] += 1

    def counts(self) -> dict[str, dict[str, int]]:
        """``{policy: {sent, limited, deduplicated}}`` so far (thread-safe copy)."""
        with self._lock:
            return {name: dict(values) for name, values in self._counts.items()}

"""Feedback policies: what each sends, its limits and de-duplication, on an injected clock."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from edge_agent.agent import Agent
from edge_agent.config import FeedbackConfig, RateLimits
from edge_agent.policies import Deduplicator, FeedbackPolicies, RateLimiter, dhash
from qcloop.contracts import Detection, Thresholds
from qcloop.settings import StoreSettings
from qcloop.storage import list_raw_images, open_store
from tests.edge_agent.edge_helpers import make_config, make_constant_model

THRESHOLDS = Thresholds(confidence=0.25, feedback_below=0.5)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def boxes(*scores: float) -> list[Detection]:
    return [Detection(label="scratch", score=s, box=(0, 0, 1, 1)) for s in scores]


def policies(clock: FakeClock | None = None, **settings: Any) -> FeedbackPolicies:
    config = FeedbackConfig.model_validate({"policies": settings})
    return FeedbackPolicies(config, clock=clock or FakeClock())


def sha(i: int) -> str:
    return f"{i:064x}"


def test_the_default_is_the_classic_feedback_below_rule() -> None:
    chooser = policies()
    assert chooser.decide(sha(1), boxes(0.3), THRESHOLDS, 1).reason == "low_confidence"  # type: ignore[union-attr]
    assert chooser.decide(sha(2), [], THRESHOLDS, 2) is not None  # best score 0
    assert chooser.decide(sha(3), boxes(0.5), THRESHOLDS, 3) is None  # not below
    assert chooser.counts()["band"] == {"sent": 2, "limited": 0, "deduplicated": 0}


def test_a_confidence_band_sends_only_inside_it() -> None:
    chooser = policies(band={"low": 0.3, "high": 0.6})
    sent = [
        chooser.decide(sha(i), boxes(s), THRESHOLDS, i) for i, s in enumerate([0.1, 0.3, 0.6, 0.7])
    ]
    assert [d.policy if d else None for d in sent] == [None, "band", "band", None]


def test_always_send_defects_and_detection_count_use_sampling() -> None:
    chooser = policies(
        band={"enabled": False}, defects={"enabled": True}, count={"min_detections": 3}
    )
    defect = chooser.decide(sha(1), boxes(0.9), THRESHOLDS, 1)
    assert defect is not None and (defect.policy, defect.reason) == ("defects", "sampling")
    chooser = policies(band={"enabled": False}, count={"min_detections": 3})
    assert chooser.decide(sha(2), boxes(0.9, 0.9), THRESHOLDS, 2) is None
    crowded = chooser.decide(sha(3), boxes(0.9, 0.9, 0.9), THRESHOLDS, 3)
    assert crowded is not None and (crowded.policy, crowded.reason) == ("count", "sampling")


def test_defects_min_score_overrides_the_confidence_threshold() -> None:
    chooser = policies(band={"enabled": False}, defects={"enabled": True, "min_score": 0.8})
    assert chooser.decide(sha(1), boxes(0.7), THRESHOLDS, 1) is None
    assert chooser.decide(sha(2), boxes(0.8), THRESHOLDS, 2) is not None


def test_a_random_share_is_seeded_and_roughly_that_share() -> None:
    def run() -> list[bool]:
        chooser = policies(band={"enabled": False}, random={"share": 0.25, "seed": 7})
        return [chooser.decide(sha(i), boxes(0.9), THRESHOLDS, i) is not None for i in range(400)]

    first = run()
    assert first == run()  # same seed, same frames
    assert 70 <= sum(first) <= 130


def test_a_policy_stops_at_its_limit_per_minute_and_resumes_later() -> None:
    clock = FakeClock()
    chooser = policies(clock, band={"per_minute": 2})
    sent = [chooser.decide(sha(i), [], THRESHOLDS, i) for i in range(5)]
    assert sum(d is not None for d in sent) == 2
    assert chooser.counts()["band"] == {"sent": 2, "limited": 3, "deduplicated": 0}
    clock.now += 60.0
    assert chooser.decide(sha(9), [], THRESHOLDS, 9) is not None


def test_a_limited_policy_lets_the_next_matching_one_send() -> None:
    chooser = policies(band={"per_hour": 1}, count={"min_detections": 1})
    assert chooser.decide(sha(1), boxes(0.3), THRESHOLDS, 1).policy == "band"  # type: ignore[union-attr]
    assert chooser.decide(sha(2), boxes(0.3), THRESHOLDS, 2).policy == "count"  # type: ignore[union-attr]


def test_the_hour_and_day_windows_hold_independently() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(per_minute=10, per_hour=3, per_day=4), clock)
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    clock.now += 3600.0
    assert [limiter.allow() for _ in range(2)] == [True, False]  # the day's 4th, then none
    clock.now += 86400.0
    assert limiter.allow()


def test_the_same_image_is_not_sent_twice_within_the_window() -> None:
    clock = FakeClock()
    chooser = policies(clock, dedup_window_s=600)
    assert chooser.decide(sha(1), [], THRESHOLDS, 1) is not None
    assert chooser.decide(sha(1), [], THRESHOLDS, 2) is None
    assert chooser.counts()["band"]["deduplicated"] == 1
    clock.now += 601.0
    assert chooser.decide(sha(1), [], THRESHOLDS, 3) is not None


def test_dedup_memory_is_bounded() -> None:
    dedup = Deduplicator(window_s=600, max_entries=2, clock=FakeClock())
    for i in range(3):
        dedup.remember(sha(i))
    assert not dedup.seen(sha(0)) and dedup.seen(sha(1)) and dedup.seen(sha(2))


def test_sample_every_still_samples_without_limits() -> None:
    config = FeedbackConfig(sample_every=2)
    chooser = FeedbackPolicies(config, clock=FakeClock(), rng=random.Random(0))
    sent = [chooser.decide(sha(i), boxes(0.9), THRESHOLDS, i) for i in range(1, 5)]
    assert [d.reason if d else None for d in sent] == [None, "sampling", None, "sampling"]


@pytest.mark.parametrize(
    "bad",
    [
        {"band": {"low": 0.6, "high": 0.4}},
        {"random": {"share": 1.5}},
        {"count": {"per_minute": -1}},
        {"band": {"typo": 1}},
    ],
)
def test_bad_policy_settings_fail_at_start(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="policies"):
        FeedbackConfig.model_validate({"policies": bad})


@pytest.mark.integration
def test_the_agent_applies_a_policy_limit_and_counts_it(
    mqtt_url: str, tag_images: list[Path], tmp_path: Path
) -> None:
    # given a model that finds nothing (every frame is in the band) and 1 frame per minute
    model = make_constant_model(tmp_path / "m.onnx", np.zeros((1, 84, 10), np.float32))
    store = StoreSettings(kind="local", path=tmp_path / "store")
    feedback = {"drain_timeout_s": 5.0, "policies": {"band": {"per_minute": 1}}}
    config = make_config(tmp_path, mqtt_url, store, "cam-limit", feedback=feedback)
    (tmp_path / "inbox").mkdir()
    for image in tag_images:
        shutil.copy(image, tmp_path / "inbox")
    # when three frames are inspected
    stats = Agent(config, initial_model=model).run(max_frames=3, timeout_s=30)
    # then one went back, two were limited, and the stats say so
    assert stats.frames_inferred == 3 and stats.feedback_images == 1
    assert len(list_raw_images(open_store(store))) == 1
    assert stats.feedback_policies["band"] == {"sent": 1, "limited": 2, "deduplicated": 0}


def test_near_duplicates_are_off_by_default_and_caught_when_asked_for(metal_tags: Path) -> None:
    image = Image.open(next((metal_tags / "images").glob("*.jpg")))
    noisy = np.asarray(image.convert("RGB")).astype(np.int16) + 3  # the same part, brighter
    same_part = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    calls: list[int] = []

    def fingerprint(picture: Image.Image) -> Callable[[], int]:
        return lambda: calls.append(1) or dhash(picture)

    # off (default): a different sha256 is a different frame, and no dHash is computed
    chooser = policies()
    assert chooser.decide(sha(1), [], THRESHOLDS, 1, fingerprint(image)) is not None
    assert chooser.decide(sha(2), [], THRESHOLDS, 2, fingerprint(same_part)) is not None
    assert calls == []
    # on: the brighter copy is a near-duplicate of the frame sent, a blank frame is not
    chooser = policies(near_duplicate_bits=4)
    assert chooser.decide(sha(1), [], THRESHOLDS, 1, fingerprint(image)) is not None
    assert chooser.decide(sha(2), [], THRESHOLDS, 2, fingerprint(same_part)) is None
    assert chooser.counts()["band"]["deduplicated"] == 1
    gradient = Image.fromarray(np.tile(np.arange(0, 255, 2, dtype=np.uint8), (64, 1)))
    assert chooser.decide(sha(3), [], THRESHOLDS, 3, fingerprint(gradient)) is not None
    # a frame no policy sends costs no dHash
    before = len(calls)
    assert chooser.decide(sha(4), boxes(0.9), THRESHOLDS, 4, fingerprint(image)) is None
    assert len(calls) == before


def test_near_duplicates_expire_with_the_window() -> None:
    clock = FakeClock()
    dedup = Deduplicator(window_s=60, max_entries=10, clock=clock, near_bits=2)
    dedup.remember(sha(1), 0b1111)
    assert dedup.seen(sha(2), 0b1100) and not dedup.seen(sha(2), 0b0000)
    clock.now += 61
    assert not dedup.seen(sha(2), 0b1111)


def test_dhash_of_a_picture_and_its_mirror() -> None:
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1)))
    assert dhash(ramp) == (1 << 64) - 1  # brighter to the right everywhere: all 64 bits set
    assert dhash(ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == 0

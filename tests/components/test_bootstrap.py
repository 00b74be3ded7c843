"""Capture-grouped bootstrap of mAP50-95, on synthetic per-image statistics (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from components.bootstrap import (
    ImageStats,
    grouped_interval,
    map50_95,
    paired_interval,
    stats_from_json,
    stats_to_json,
)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def synthetic_image(rng: np.random.Generator, offset: float = 0.0, boxes: int = 3) -> ImageStats:
    """One image of ``boxes`` true boxes, one prediction each; ``offset`` shifts its IoUs,
    as a capture shares its lighting and angle."""
    iou = np.clip(rng.uniform(0.3, 1.0, boxes) + offset, 0.0, 1.0)
    return ImageStats(
        tp=iou[:, None] >= IOU_THRESHOLDS[None, :],
        conf=rng.uniform(0.1, 1.0, boxes),
        pred_cls=np.zeros(boxes),
        target_cls=np.zeros(boxes),
    )


def synthetic_split(
    captures: int, *, seed: int = 1, crops: int = 4
) -> tuple[list[ImageStats], list[str]]:
    """``captures`` captures of ``crops`` images, each capture with its own IoU offset."""
    rng = np.random.default_rng(seed)
    images, groups = [], []
    for c in range(captures):
        offset = rng.normal(0.0, 0.15)
        for _ in range(crops):
            images.append(synthetic_image(rng, offset))
            groups.append(f"capture-{c}")
    return images, groups


def test_the_figure_is_ultralytics_own() -> None:
    # given ultralytics' DetMetrics fed the same per-image entries as its validator does
    from ultralytics.utils.metrics import DetMetrics

    images, _ = synthetic_split(5)
    det = DetMetrics(names={0: "tag"})
    for n, image in enumerate(images):
        det.update_stats(
            {
                "tp": image.tp,
                "conf": image.conf,
                "pred_cls": image.pred_cls,
                "target_cls": image.target_cls,
                "target_img": np.unique(image.target_cls),
                "im_name": f"{n}.jpg",
            }
        )
    # when both compute mAP50-95
    det.process()
    # then they agree
    assert map50_95(images) == pytest.approx(det.box.map, abs=1e-12)


def test_identical_captures_give_a_zero_width_interval() -> None:
    rng = np.random.default_rng(3)
    capture = [synthetic_image(rng) for _ in range(4)]
    images = capture * 5
    groups = [f"capture-{c}" for c in range(5) for _ in capture]
    interval = grouped_interval(images, groups, resamples=50)
    assert interval is not None
    low, high = interval
    assert high - low == pytest.approx(0.0, abs=1e-12)
    assert low == pytest.approx(map50_95(capture), abs=1e-12)


def test_interval_contains_the_point_figure() -> None:
    images, groups = synthetic_split(7)
    interval = grouped_interval(images, groups, resamples=200)
    assert interval is not None
    low, high = interval
    assert 0.0 <= low <= map50_95(images) <= high <= 1.0
    assert high > low


def test_interval_is_deterministic_for_a_seed() -> None:
    images, groups = synthetic_split(6)
    first = grouped_interval(images, groups, resamples=100, seed=7)
    assert grouped_interval(images, groups, resamples=100, seed=7) == first
    assert grouped_interval(images, groups, resamples=100, seed=8) != first


def test_more_captures_give_a_narrower_interval() -> None:
    widths = []
    for captures in (4, 40):
        images, groups = synthetic_split(captures)
        interval = grouped_interval(images, groups, resamples=200)
        assert interval is not None
        widths.append(interval[1] - interval[0])
    assert widths[1] < widths[0]


def test_one_capture_has_no_interval() -> None:
    images, groups = synthetic_split(1)
    assert grouped_interval(images, groups) is None


def test_a_group_label_per_image_is_required() -> None:
    images, groups = synthetic_split(2)
    with pytest.raises(ValueError, match="8 image stats but 7 group labels"):
        grouped_interval(images, groups[:-1])


def test_a_model_paired_with_itself_differs_by_nothing() -> None:
    images, groups = synthetic_split(6)
    assert paired_interval(images, images, groups, resamples=100) == (0.0, 0.0)


def test_paired_interval_is_narrower_than_the_two_intervals_apart() -> None:
    # given two models that share each capture's difficulty, the second a little better
    images, groups = synthetic_split(8, seed=3)
    rng = np.random.default_rng(4)
    better = [
        ImageStats(
            tp=i.tp | (rng.uniform(size=i.tp.shape) < 0.15),
            conf=i.conf,
            pred_cls=i.pred_cls,
            target_cls=i.target_cls,
        )
        for i in images
    ]
    # then the paired difference is sure of its sign, though each model's own interval
    # overlaps the other's
    low, high = paired_interval(better, images, groups, resamples=300) or (0.0, 0.0)
    assert 0.0 < low <= map50_95(better) - map50_95(images) <= high
    ours = grouped_interval(better, groups, resamples=300)
    theirs = grouped_interval(images, groups, resamples=300)
    assert ours is not None and theirs is not None and ours[0] < theirs[1]


def test_paired_needs_the_same_images() -> None:
    images, groups = synthetic_split(3)
    with pytest.raises(ValueError, match="image stats for"):
        paired_interval(images, images[:-1], groups)
    assert paired_interval(images[:4], images[:4], groups[:4]) is None  # one capture


def test_statistics_survive_the_step_boundary() -> None:
    images, groups = synthetic_split(2)
    files = [f"/tmp/x/images/img-{i}.jpg" for i in range(len(images))]
    back = stats_from_json(stats_to_json(files, groups, images))
    assert sorted(back) == sorted(f"img-{i}.jpg" for i in range(len(images)))
    group, stats = back["img-5.jpg"]
    assert group == groups[5]
    assert (stats.tp == images[5].tp).all() and np.allclose(stats.conf, images[5].conf)
    assert map50_95([s for _, s in back.values()]) == pytest.approx(map50_95(images))

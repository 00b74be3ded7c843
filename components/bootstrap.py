"""Capture-grouped bootstrap of mAP50-95: how far the figure moves from split to split.

The crops of one capture share lighting, part and angle, so a test split of a few
captures holds far fewer independent samples than images. Resampling whole
captures with replacement, and recomputing mAP50-95 with ultralytics' own
``ap_per_class`` on the pooled per-image statistics of its validator, gives an
interval around the very figure the validator reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class ImageStats:
    """One image's entry of ultralytics' ``DetMetrics.stats``.

    ``tp``: (predictions, 10) matches at IoU 0.50..0.95; ``conf`` and ``pred_cls``:
    per prediction; ``target_cls``: per true box.
    """

    tp: NDArray[np.bool_]
    conf: NDArray[np.floating]
    pred_cls: NDArray[np.floating]
    target_cls: NDArray[np.floating]


def pool(images: Sequence[ImageStats]) -> ImageStats:
    """The statistics of ``images`` concatenated, as the validator pools them."""
    if not images:
        return ImageStats(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    return ImageStats(
        tp=np.concatenate([i.tp for i in images], 0),
        conf=np.concatenate([i.conf for i in images], 0),
        pred_cls=np.concatenate([i.pred_cls for i in images], 0),
        target_cls=np.concatenate([i.target_cls for i in images], 0),
    )


def map50_95(images: Sequence[ImageStats]) -> float:
    """mAP50-95 of ``images`` pooled, computed as ultralytics' ``DetMetrics.process`` does."""
    from components.yolo_env import configure_offline

    configure_offline()
    from ultralytics.utils.metrics import ap_per_class

    pooled = pool(images)
    ap = ap_per_class(pooled.tp, pooled.conf, pooled.pred_cls, pooled.target_cls)[5]
    return float(ap.mean()) if len(ap) else 0.0


def grouped_interval(
    images: Sequence[ImageStats],
    groups: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mAP50-95, resampling whole groups with replacement.

    None with fewer than two groups: one capture says nothing about how the figure
    moves between captures, and a zero-width interval would read as "no noise".
    The interval is widened to contain the full-sample figure, which a percentile
    interval of a skewed, few-capture distribution can miss.
    """
    if len(images) != len(groups):
        raise ValueError(f"{len(images)} image stats but {len(groups)} group labels")
    by_group = _pool_by_group(images, groups)
    if len(by_group) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(by_group), size=(resamples, len(by_group)))
    values = np.array([map50_95([by_group[g] for g in draw]) for draw in draws])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    point = map50_95(by_group)
    return min(float(low), point), max(float(high), point)


def _pool_by_group(images: Sequence[ImageStats], groups: Sequence[str]) -> list[ImageStats]:
    """One pooled entry per group, in sorted group order (a stable resampling order)."""
    members: dict[str, list[ImageStats]] = {}
    for stats, group in zip(images, groups, strict=True):
        members.setdefault(group, []).append(stats)
    return [pool(members[g]) for g in sorted(members)]

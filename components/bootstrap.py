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
from functools import cache
from pathlib import Path
from typing import Any

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
    pooled = pool(images)
    ap = _ap_per_class()(pooled.tp, pooled.conf, pooled.pred_cls, pooled.target_cls)[5]
    return float(ap.mean()) if len(ap) else 0.0


@cache
def _ap_per_class() -> Any:
    """ultralytics' ``ap_per_class``, imported once (a bootstrap calls it thousands of times)."""
    from qcloop.yolo_env import configure_offline

    configure_offline()
    from ultralytics.utils.metrics import ap_per_class

    return ap_per_class


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


def paired_interval(
    challenger: Sequence[ImageStats],
    champion: Sequence[ImageStats],
    groups: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Interval of mAP50-95 (challenger) - mAP50-95 (champion) on the same images.

    Both models' statistics are for the same images in the same order; each resample
    draws the same captures for both, so what the two have in common (hard captures,
    loose labels) cancels out of the difference. None with fewer than two captures.
    """
    if not len(challenger) == len(champion) == len(groups):
        raise ValueError(
            f"{len(challenger)} and {len(champion)} image stats for {len(groups)} group labels"
        )
    ours, theirs = _pool_by_group(challenger, groups), _pool_by_group(champion, groups)
    if len(ours) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ours), size=(resamples, len(ours)))
    values = np.array(
        [map50_95([ours[g] for g in draw]) - map50_95([theirs[g] for g in draw]) for draw in draws]
    )
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    point = map50_95(ours) - map50_95(theirs)
    return min(float(low), point), max(float(high), point)


def stats_to_json(files: Sequence[str], groups: Sequence[str], images: Sequence[ImageStats]) -> str:
    """Per-image statistics as JSON (one object an image, keyed by file name), to hand from
    the evaluation step to the champion step."""
    import json

    return json.dumps(
        [
            {
                "file": Path(file).name,
                "group": group,
                "tp": stats.tp.astype(int).tolist(),
                "conf": stats.conf.tolist(),
                "pred_cls": stats.pred_cls.tolist(),
                "target_cls": stats.target_cls.tolist(),
            }
            for file, group, stats in zip(files, groups, images, strict=True)
        ]
    )


def stats_from_json(text: str) -> dict[str, tuple[str, ImageStats]]:
    """``stats_to_json``'s images: file name -> (capture group, statistics)."""
    import json

    found = {}
    for row in json.loads(text):
        tp = np.asarray(row["tp"], dtype=bool).reshape(-1, 10)
        stats = ImageStats(
            tp=tp,
            conf=np.asarray(row["conf"], dtype=float),
            pred_cls=np.asarray(row["pred_cls"], dtype=float),
            target_cls=np.asarray(row["target_cls"], dtype=float),
        )
        found[str(row["file"])] = (str(row["group"]), stats)
    return found

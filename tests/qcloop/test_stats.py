"""Nearest-rank percentiles: the one definition the edge heartbeat and evaluation share."""

from __future__ import annotations

import pytest

from qcloop.stats import percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95)) == (50.0, 95.0)
    assert percentile([7.0], 95) == 7.0


def test_percentile_is_always_a_measured_value() -> None:
    # given 20 latencies (evaluation times 20 images), in any order
    values = [float(v) for v in range(20, 0, -1)]
    # then p50 and p95 are the 10th and 19th smallest, no interpolation
    assert (percentile(values, 50), percentile(values, 95)) == (10.0, 19.0)
    assert (percentile(values, 0), percentile(values, 100)) == (1.0, 20.0)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)

"""The labelling benchmark runs end to end (a few images) and prints its same-run baseline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_bench_labelling_prints_figures_and_the_baseline_ratio(metal_tags: Path) -> None:
    # given the script with a real Label Studio of its own (first start: migrations)
    cmd = [sys.executable, "-m", "benchmarks.bench_labelling"]
    out = subprocess.run(
        [*cmd, "--images", "6", "--batch-size", "4", "--data", str(metal_tags)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # then the figures: every image synced in batches and one a request, and versioned
    figures = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert figures["sync_in_created"] == 6 and figures["sync_in_one_per_request_created"] == 6
    assert figures["sync_in_repeat_created"] == 0
    assert figures["round_version"] == "v1" and figures["import_annotated_created"] == 6
    # and the ratio against the baseline measured in the same run
    line = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"sync-in of 6 tasks: [\d.]+ s in batches of 4, [\d.]+ s one task a request "
        r"\(same run\): [\d.]+x faster",
        line,
    ), line

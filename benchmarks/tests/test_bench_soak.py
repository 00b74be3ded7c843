"""The soak benchmark runs end to end (~40 s, one outage of each kind) and loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_soak import Outage, numbered_jpeg

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_short_soak_with_outages_loses_and_duplicates_nothing(
    yolo_onnx: Path, metal_tags: Path, tmp_path: Path
) -> None:
    # given 40 s of frames at 3 fps, the store down at 12-20 s and 24-32 s, the broker at 20-26 s
    cmd = [sys.executable, "-m", "benchmarks.bench_soak", "--model", str(yolo_onnx)]
    cmd += ["--images", str(metal_tags / "images"), "--out", str(tmp_path / "out")]
    cmd += ["--duration", "40", "--fps", "3", "--sample-every", "5", "--backoff-max", "2"]
    cmd += ["--store-outage", "8/12", "--broker-outage", "6/20", "--drain-timeout", "60"]
    # when it runs
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "soak.json").read_text())
    # then both outages happened, every frame was inferred, every image sent is in S3 once
    assert (report["store_outages"], report["broker_outages"]) == ("2 x 8 s", "1 x 6 s")
    assert report["frames_inferred"] == report["frames_written"] >= 110
    assert report["feedback_sent"] > 20 and report["upload_failures"] > 0
    assert report["feedback_lost"] == 0 and report["feedback_dropped"] == 0
    assert report["duplicates"] == 0
    # and the figures are there: RSS and disk over time, log volume, on stdout too
    for key in ("rss_mb", "state_mb", "processed_mb"):
        assert set(report[key]) == {"start", "max", "end", "slope_per_h"}
    assert report["rss_mb"]["max"] > 50 and len(report["samples"]) >= 8
    assert report["log_lines_per_h"] > 0 and report["non_json_lines"] == 0
    assert "| feedback sent / delivered / lost" in out.stdout and "| RSS MB" in out.stdout


def test_outage_schedule_and_numbered_frames() -> None:
    # an outage of 8 s every 12 s in a 40 s run: at 12-20 and 24-32; 36-44 would end after
    outage = Outage.parse("8/12")
    down = [t for t in range(40) if outage.is_down(t, 40)]
    assert down == [*range(12, 20), *range(24, 32)]
    # a numbered frame is other bytes of the same JPEG (a comment right after its start)
    photo = b"\xff\xd8\xff\xe0rest"
    assert numbered_jpeg(photo, 1) != numbered_jpeg(photo, 2)
    assert numbered_jpeg(photo, 1).startswith(b"\xff\xd8\xff\xfe") and photo[2:] in numbered_jpeg(
        photo, 1
    )

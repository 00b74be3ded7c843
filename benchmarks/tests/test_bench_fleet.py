"""The fleet benchmark runs end to end on a small fleet (~30 s) and prints its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.charts.conftest import helm_path  # noqa: F401 - the chart's helm, installed once

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("presigned", [False, True], ids=["s3", "presigned"])
def test_a_small_fleet_takes_two_releases_and_the_figures_are_printed(
    helm_path: Path,  # noqa: F811
    tmp_path: Path,
    presigned: bool,
) -> None:
    # given 20 devices, each with its own MQTT user under the chart's ACL, and a 0.2 MB model
    cmd = [sys.executable, "-m", "benchmarks.bench_fleet", "--devices", "20"]
    cmd += ["--jitter", "0", "1", "--model-mb", "0.2", "--idle", "1", "--timeout", "60"]
    cmd += ["--helm", str(helm_path), "--out", str(tmp_path)]
    cmd += ["--presigned"] if presigned else []
    # when the benchmark runs
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # then every device connected, and served each release, fetched once per device
    assert out.returncode == 0, out.stderr[-3000:]
    size = json.loads((tmp_path / "fleet.json").read_text())["sizes"][0]
    assert size["connect"]["subscribed"] == 20 and size["connect"]["errors"] == {}
    read = size["idle"]["bridge_read"]  # the bridge, in its own process, reads them all
    assert (read["devices"], read["of"]) == (20, 20) and read["all_retained_s"] is not None
    assert [r["serving"] for r in size["releases"]] == [20, 20]
    for release in size["releases"]:
        gets = sum(v for k, v in release["store_requests"].items() if k.startswith("GET 2"))
        assert gets >= 20 and release["device_errors"] == {}
        assert 0 < release["serving_s"]["max"] < 30
        assert release["rss_mb"]["broker"] > 0 and release["cpu_pct"]["broker"] >= 0
    # with the random wait of up to 1 s, the downloads began within it
    assert size["releases"][1]["download_at_s"]["max"] < 1.0 + 5.0
    # and the tables are on stdout
    assert "| devices | connect storm" in out.stdout and "| devices | jitter s |" in out.stdout
    assert "| 20 | 0 | 20/20 |" in out.stdout and "| 20 | 1 | 20/20 |" in out.stdout

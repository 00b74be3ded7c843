"""The loop benchmark: round 1, the edge agent's picks from a stream, round 2 on them or
on as many random ones, every model scored on captures no round trains on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_loop
from edge_agent.config import FeedbackConfig
from edge_agent.inference import Detector
from edge_agent.policies import FeedbackPolicies
from qcloop.contracts import DatasetManifest, Thresholds
from qcloop.storage import sha256_bytes
from qcloop.yolo import capture_group


def test_captures_are_cut_in_thirds_by_seed_and_never_shared() -> None:
    groups = [f"capture-{i:02d}" for i in range(47)] * 4  # four photos each
    split = bench_loop.split_captures(groups, 0)
    parts = [set(part) for part in split]
    assert [len(p) for p in parts] == [12, 4, 16, 15]  # round 1 (train, val), stream, held out
    assert set().union(*parts) == set(groups) and sum(map(len, parts)) == 47
    assert bench_loop.split_captures(groups, 0) == split
    assert bench_loop.split_captures(groups, 1) != split
    small = bench_loop.split_captures([f"c{i}" for i in range(4)], 3)
    assert [len(part) for part in small] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="4 or more"):
        bench_loop.split_captures(["a", "b", "c"], 0)


def test_summary_pairs_each_variant_with_random_by_seed() -> None:
    seeds = [
        {
            "round1": {"map50_95": r1},
            "round2": {"policy": {"map50_95": p}, "random": {"map50_95": r}},
        }
        for r1, p, r in [(0.1, 0.3, 0.2), (0.2, 0.3, 0.4)]
    ]
    summary = bench_loop.summarise(seeds, ["policy", "random"])
    assert summary["policy"]["vs_random"]["mean"] == 0.0
    assert (summary["policy"]["vs_random"]["min"], summary["policy"]["vs_random"]["max"]) == (
        -0.1,
        0.1,
    )
    assert summary["random"]["gain"]["mean"] == 0.15 and "vs_random" not in summary["random"]
    assert summary["round1"]["mean"] == 0.15


@pytest.mark.integration
def test_bench_loop_retrains_on_the_agents_picks_and_as_many_random_ones(
    metal_tags: Path, tmp_path: Path
) -> None:
    # given the sample's four captures, one epoch at 160 and a budget below the stream's size
    out = tmp_path / "out"
    variants = ["policy", "random", "uncertainty", "novelty"]
    cmd = [sys.executable, "-m", "benchmarks.bench_loop", "--data", str(metal_tags)]
    cmd += ["--seeds", "0", "--epochs", "1", "--imgsz", "160", "--budget", "3"]
    cmd += ["--policies", ",".join(variants), "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # then round 1 and every round-2 variant were scored on the held-out captures
    results = json.loads((out / "results.json").read_text())
    seed = results["seeds"][0]
    assert 0.0 <= seed["round1"]["map50_95"] <= 1.0 and seed["round1"]["images"] == 4
    assert list(seed["round2"]) == variants
    assert all(0.0 <= run["map50_95"] <= 1.0 for run in seed["round2"].values())
    assert set(results["summary"]["policy"]) == {"round2", "gain", "vs_random"}
    assert "| 0 |" in done.stdout and "policy: round 1 -> round 2" in done.stdout
    # and every variant had as many picks as the agent sent back, up to the budget
    assert seed["picks"] == min(3, seed["sent"]) > 0
    assert {len(run["picked"]) for run in seed["round2"].values()} == {seed["picks"]}
    # and no round trained (or picked its best epoch) on a held-out capture
    heldout, stream = set(seed["captures"]["heldout"]), set(seed["captures"]["stream"])
    round1 = DatasetManifest.load(out / "seed0" / "round1" / "data" / "manifest.json")
    first = {img.file for img in round1.images if img.split == "train"}
    for run in ["round1", *variants]:
        manifest = DatasetManifest.load(out / "seed0" / run / "data" / "manifest.json")
        trained = {img.group for img in manifest.images if img.split != "test"}
        assert not trained & heldout, run
        assert {img.group for img in manifest.images if img.split == "test"} == heldout
        train = {img.file for img in manifest.images if img.split == "train"}
        if run != "round1":
            assert train == first | set(seed["round2"][run]["picked"]), run
            assert {capture_group(Path(f).stem) for f in train - first} <= stream
    # and the policy's picks are what the edge agent's feedback policy sends back from the
    # stream with round 1's model, least confident first (ties: stream order)
    thresholds = Thresholds()
    detector = Detector(
        out / "seed0" / "round1" / "model.onnx",
        confidence=thresholds.confidence,
        iou=thresholds.iou,
    )
    policies = FeedbackPolicies(FeedbackConfig())
    photos = sorted(metal_tags.glob("images/*.jpg"))
    photos = sorted(
        (p for p in photos if capture_group(p.stem) in stream),
        key=lambda p: (capture_group(p.stem), p.name),
    )
    sent = []
    for number, photo in enumerate(photos, start=1):
        detections = detector.detect(photo.read_bytes())
        if policies.decide(sha256_bytes(photo.read_bytes()), detections, thresholds, number):
            sent.append((max((d.score for d in detections), default=0.0), number, photo))
    assert len(sent) == seed["sent"]
    expected = [f"images/{photo.name}" for _, _, photo in sorted(sent)[: seed["picks"]]]
    assert seed["round2"]["policy"]["picked"] == expected
    # and called again with --reuse, nothing trains again and the figures stand
    cmd[cmd.index("--policies") + 1] = "policy,random"
    again = subprocess.run([*cmd, "--reuse"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reused (--reuse)") == 3 and "epoch 1/1" not in again.stderr
    reused = json.loads((out / "results.json").read_text())["seeds"][0]
    assert reused["round1"] == seed["round1"]
    assert reused["round2"] == {k: seed["round2"][k] for k in ("policy", "random")}

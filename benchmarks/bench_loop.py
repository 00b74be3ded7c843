"""Does the loop pick the right images? The edge agent's feedback picks against random ones.

    .venv/bin/python -m benchmarks.bench_loop [--data DIR] [--seeds 0,1,2] [--epochs 20]
        [--imgsz 320] [--budget 24] [--device cpu|0] [--policies policy,random]
        [--out .qcloop/bench-loop]

For each seed the captures of ``--data`` (sorted, their names are capture times, then
shuffled by the seed) are cut into thirds: round-1 captures (a quarter of them the val
split), stream captures, and held-out captures that no round ever trains on. Round 1
trains on the round-1 captures (``components.train.train_yolo``: the product's default
recipe, from ``yolov8n.yaml``), is exported (``components.export.export_onnx``) and runs
over every stream photo with the edge agent's own ``Detector`` and ``FeedbackPolicies``
(default ``FeedbackConfig`` and ``Thresholds``: the band policy, best score below
``feedback_below``; no rate limit is set by default, and de-duplication drops exact
copies only). Of the photos it sends back, at most ``--budget`` go to labelling, least
confident first, in the order Label Studio's sync-in gives them (``pending_images``);
their labels are the folder's own (the stand-in annotator). Round 2 trains again from
scratch, same recipe, epochs and seed, on the round-1 photos plus the picks of each of
``--policies``, all of the same size N (the agent's picks):

    policy       the photos the agent sends back
    random       N stream photos at random (seeded)
    uncertainty  the N whose box scores (down to 0.01) come closest to 0.5
    novelty      the N whose dHash is farthest from every round-1 train photo

Every model is scored on the held-out captures (``components.evaluate.evaluate_onnx``:
mAP50-95). The table gives each seed's figures, each variant's paired difference to
``random`` (mean, sd, min and max over seeds) and the gain over round 1. Results go to
``<out>/results.json``, rewritten after every training; runs stay under ``<out>/seedS/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.common import DEFAULT_DATA, ROOT, configure_bench_logging, dataset_folder

log = logging.getLogger("benchmarks.bench_loop")
VARIANTS = ("policy", "random", "uncertainty", "novelty")
UNCERTAINTY_FLOOR = 0.01  # the lowest box score the uncertainty variant looks at


class Split(NamedTuple):
    """Capture groups: round-1 train and val, the stream, and the held-out ones."""

    train: list[str]
    val: list[str]
    stream: list[str]
    heldout: list[str]


class StreamImage(NamedTuple):
    """A stream photo as round 1's model saw it."""

    file: str
    group: str
    best: float  # best box score at the agent's thresholds (0: no box)
    uncertainty: float  # 1 - |2s - 1| of its box closest to 0.5 (0: no box)
    novelty: int  # dHash bits to the nearest round-1 train photo


def split_captures(groups: list[str], seed: int) -> Split:
    """The captures, sorted then shuffled by ``seed``, in thirds (round 1, stream, held out);
    the first quarter of round 1's (at least one) is its val split."""
    ordered = sorted(set(groups))
    if len(ordered) < 4:
        raise ValueError(f"{len(ordered)} captures: the benchmark needs 4 or more")
    random.Random(seed).shuffle(ordered)
    size, extra = divmod(len(ordered), 3)
    first, second = size + (extra > 0), size + (extra > 1)
    round1, stream = ordered[:first], ordered[first : first + second]
    val = max(1, len(round1) // 4)
    heldout = ordered[first + second :]
    return Split(*(sorted(part) for part in (round1[val:], round1[:val], stream, heldout)))


def round_dataset(dataset: Path, split: Split, picked: list[str], dest: Path) -> Path:
    """``dest``: dataset folder ``dataset`` with round-1 train captures and ``picked`` (stream
    files) in train, round-1 val captures in val, the held-out ones in test, nothing else."""
    from benchmarks.common import save_manifest_copy
    from qcloop.contracts import DatasetManifest

    manifest = DatasetManifest.load(dataset / "manifest.json")
    parts = {"train": split.train, "val": split.val, "test": split.heldout}
    roles = {group: role for role, groups in parts.items() for group in groups}
    chosen, images = set(picked), []
    for img in manifest.images:
        where = "train" if img.file in chosen else roles.get(img.group)
        if where is not None:
            images.append(img.model_copy(update={"split": where}))
    dest.mkdir(parents=True)
    for name in ("images", "labels", "classes.txt"):
        (dest / name).symlink_to(dataset / name)
    save_manifest_copy(
        manifest, images, f"{manifest.source} (bench_loop, {len(picked)} picks)", dest
    )
    return dest


def train_and_score(
    dataset: Path, out: Path, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Train on ``dataset`` as the product does, export, score on its test split (held out);
    with ``--reuse`` the figures of an earlier call's run of the same data and settings."""
    from components.evaluate import evaluate_onnx
    from components.export import export_onnx
    from components.train import train_yolo
    from qcloop.contracts import DatasetManifest

    images = DatasetManifest.load(dataset / "manifest.json").images
    same = [str(args.data.resolve()), args.epochs, args.imgsz, args.batch, args.device, seed]
    same.append(sorted((img.file, img.split) for img in images))
    key = hashlib.sha256(json.dumps(same).encode()).hexdigest()
    saved = out / "result.json"
    if args.reuse and saved.is_file() and (out / "model.onnx").is_file():
        result: dict[str, Any] = json.loads(saved.read_text())
        if result.get("key") == key:
            log.info("%s: reused (--reuse)", out)
            return result
    started = time.perf_counter()
    best = train_yolo(
        dataset,
        out,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        seed=seed,
    )
    train_s = time.perf_counter() - started
    onnx = export_onnx(best, out / "model.onnx", imgsz=args.imgsz)
    metrics = evaluate_onnx(onnx, dataset, imgsz=args.imgsz, split="test")
    result = {"train_s": round(train_s, 1), "key": key, **metrics.model_dump()}
    saved.write_text(json.dumps(result, indent=2))
    return result


def scan_stream(
    onnx: Path, root: Path, stream: list[Any], train_files: list[str]
) -> tuple[list[StreamImage], list[str]]:
    """Every stream photo (``ManifestImage``s under ``root``) through the edge agent's detector
    and feedback policies, in capture order: how round 1's model saw each, and the files
    the agent sends back, least confident first (``pending_images``'s order)."""
    from PIL import Image

    from edge_agent.config import FeedbackConfig
    from edge_agent.feedback import build_sidecar
    from edge_agent.inference import Detector, load_image
    from edge_agent.policies import FeedbackPolicies, dhash
    from qcloop.contracts import Thresholds
    from qcloop.storage import sha256_bytes
    from qcloop_labelling.sync_in import pending_images

    thresholds = Thresholds()
    detector = Detector(onnx, confidence=thresholds.confidence, iou=thresholds.iou)
    detector.warmup()
    policies = FeedbackPolicies(FeedbackConfig())
    known = [dhash(Image.open(root / f)) for f in train_files]
    start = datetime(2020, 1, 1, tzinfo=UTC)
    seen, sent, by_key = [], [], {}
    for number, img in enumerate(stream, start=1):
        data = (root / img.file).read_bytes()
        image = load_image(data)
        detections = detector.detect(image)
        scores = [d.score for d in detector.detect(image, confidence=UNCERTAINTY_FLOOR)]
        fingerprint = dhash(image)
        seen.append(
            StreamImage(
                img.file,
                img.group,
                max((d.score for d in detections), default=0.0),
                max((1.0 - abs(2.0 * s - 1.0) for s in scores), default=0.0),
                min(((fingerprint ^ h).bit_count() for h in known), default=64),
            )
        )
        decision = policies.decide(
            sha256_bytes(data), detections, thresholds, number, lambda image=image: dhash(image)
        )
        if decision is None:
            continue
        sidecar = build_sidecar(
            data,
            image,
            device_id="bench-loop",
            frame_name=img.file,
            model=None,
            predictions=detections,
            reason=decision.reason,
        )  # captured in stream order: pending_images breaks ties by capture time
        sent.append(sidecar.model_copy(update={"captured_at": start + timedelta(seconds=number)}))
        by_key[sidecar.key] = img.file
    return seen, [by_key[s.key] for s in pending_images(sent, set(), set())]


def pick(
    variant: str, seen: list[StreamImage], agent: list[str], count: int, seed: int
) -> list[str]:
    """The ``count`` stream files ``variant`` picks (``agent``: what the agent sends back,
    least confident first)."""
    if variant == "policy":
        return agent[:count]
    if variant == "random":
        return sorted(
            random.Random(f"bench-loop-random-{seed}").sample(sorted(s.file for s in seen), count)
        )
    key = {
        "uncertainty": lambda s: (-s.uncertainty, s.file),
        "novelty": lambda s: (-s.novelty, s.file),
    }[variant]
    return [s.file for s in sorted(seen, key=key)[:count]]


def spread(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sd (None for one value), min and max of ``values``."""
    return {
        "mean": round(statistics.mean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def summarise(seeds: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per variant over the seeds: round-2 mAP50-95, gain over round 1, difference to random."""
    done = [s for s in seeds if all(v in s["round2"] for v in variants)]
    if not done:
        return {}
    out: dict[str, Any] = {"round1": spread([s["round1"]["map50_95"] for s in done])}
    for v in variants:
        scores = [s["round2"][v]["map50_95"] for s in done]
        out[v] = {
            "round2": spread(scores),
            "gain": spread(
                [x - s["round1"]["map50_95"] for x, s in zip(scores, done, strict=True)]
            ),
        }
        if v != "random" and "random" in variants:
            rand = [s["round2"]["random"]["map50_95"] for s in done]
            out[v]["vs_random"] = spread([x - r for x, r in zip(scores, rand, strict=True)])
    return out


def table(seeds: list[dict[str, Any]], variants: list[str], summary: dict[str, Any]) -> list[str]:
    """The results as a markdown table and lines of paired differences."""
    others = [v for v in variants if v != "random" and "random" in variants]
    head = ["seed", "round 1", *[f"round 2 {v}" for v in variants]]
    head += [f"{v} - random" for v in others] + ["picks (sent back of the stream)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in seeds:
        r2 = s["round2"]
        cells = [str(s["seed"]), f"{s['round1']['map50_95']:.4f}"]
        cells += [f"{r2[v]['map50_95']:.4f}" if v in r2 else "-" for v in variants]
        cells += [
            f"{r2[v]['map50_95'] - r2['random']['map50_95']:+.4f}"
            if v in r2 and "random" in r2
            else "-"
            for v in others
        ]
        boxed = sum(x["best"] > 0 for x in s["stream"])
        cells.append(f"{s['picks']} ({s['sent']} of {len(s['stream'])}, {boxed} with a box)")
        lines.append("| " + " | ".join(cells) + " |")
    if summary:
        cells = ["mean", f"{summary['round1']['mean']:.4f}"]
        cells += [f"{summary[v]['round2']['mean']:.4f}" for v in variants]
        cells += [f"{summary[v]['vs_random']['mean']:+.4f}" for v in others]
        lines.append("| " + " | ".join(cells) + " | |")
        for v in variants:
            gain, paired = summary[v]["gain"], summary[v].get("vs_random")
            text = f"{v}: round 1 -> round 2 {gain['mean']:+.4f}"
            text += f" (min {gain['min']:+.4f}, max {gain['max']:+.4f})"
            if paired:
                sd = "-" if paired["sd"] is None else f"{paired['sd']:.4f}"
                text += (
                    f"; vs random {paired['mean']:+.4f} (sd {sd}, min {paired['min']:+.4f}, "
                    f"max {paired['max']:+.4f}, {paired['n']} seeds)"
                )
            lines.append(text)
    return lines


def run_seed(
    dataset: Path, tmp: Path, seed: int, args: argparse.Namespace, save: Any
) -> dict[str, Any]:
    """One seed: round 1, the agent's picks, round 2 of every variant; ``save()`` after each."""
    from qcloop.contracts import DatasetManifest

    manifest = DatasetManifest.load(dataset / "manifest.json")
    split = split_captures([img.group for img in manifest.images], seed)
    out = args.out / f"seed{seed}"
    log.info("seed %d: captures %s", seed, {k: len(v) for k, v in split._asdict().items()})
    round1 = round_dataset(dataset, split, [], tmp / f"seed{seed}-round1")
    result: dict[str, Any] = {"seed": seed, "captures": split._asdict(), "round2": {}}
    result["round1"] = train_and_score(round1, out / "round1", args, seed)
    save(result)
    stream = [img for img in manifest.images if img.group in split.stream]
    stream.sort(key=lambda img: (img.group, img.file))
    train_files = [img.file for img in manifest.images if img.group in split.train]
    seen, agent = scan_stream(out / "round1" / "model.onnx", dataset, stream, train_files)
    count = min(len(agent), args.budget)
    result.update(stream=[s._asdict() for s in seen], sent=len(agent), picks=count)
    log.info("seed %d: %d of %d stream photos sent back", seed, len(agent), len(seen))
    for variant in args.policies:
        picked = pick(variant, seen, agent, count, seed)
        data = round_dataset(dataset, split, picked, tmp / f"seed{seed}-{variant}")
        log.info("seed %d: round 2 %s on %d + %d photos", seed, variant, len(train_files), count)
        result["round2"][variant] = {
            "picked": picked,
            **train_and_score(data, out / variant, args, seed),
        }
        save(result)
    return result


def main() -> int:
    lines = __doc__.splitlines()
    parser = argparse.ArgumentParser(
        description=lines[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(lines[5:]),
    )
    options: list[tuple[str, Any, Any, str]] = [
        ("--data", Path, DEFAULT_DATA, "a YOLO folder or a dataset version folder"),
        ("--out", Path, ROOT / ".qcloop" / "bench-loop", "results.json and the runs"),
        ("--seeds", str, "0,1,2", "comma-separated: each a capture split, training seed, draw"),
        ("--epochs", int, 40, "training epochs of every round"),
        ("--imgsz", int, 320, "training, export and inference size"),
        ("--batch", int, 8, "training batch size (the product's is 16)"),
        ("--budget", int, 24, "most photos sent back that go to labelling, least sure first"),
        ("--device", str, "cpu", "training device: cpu, or a GPU index (0)"),
        ("--policies", str, "policy,random", f"round-2 variants of {','.join(VARIANTS)}"),
    ]
    for flag, kind, default, text in options:
        shown = {"--data": "../shared/datasets/metal-tags", "--out": ".qcloop/bench-loop"}
        text += f" (default {shown.get(flag, default)})"
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a run's figures from an earlier call's folder under --out when it trained "
        "on the same data with the same settings (e.g. to add a variant)",
    )
    args = parser.parse_args()
    configure_bench_logging()
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    wrong = [p for p in args.policies if p not in VARIANTS]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        seeds, wrong = [], [*wrong, f"--seeds {args.seeds}"]
    if wrong or not args.policies or args.budget < 1 or not args.data.is_dir():
        wrong = wrong or [f"--budget {args.budget}" if args.budget < 1 else f"--data {args.data}"]
        print(f"bench_loop: {', '.join(wrong)}: see --help", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: list[dict[str, Any]] = []

    def save(current: dict[str, Any] | None = None) -> None:
        rows = results + ([current] if current is not None else [])
        summary = summarise(rows, args.policies)
        (args.out / "results.json").write_text(
            json.dumps({"config": config, "seeds": rows, "summary": summary}, indent=2)
        )

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qcloop-bench-loop-") as tmp:
        dataset = dataset_folder(args.data.resolve(), Path(tmp) / "import")
        for seed in seeds:
            results.append(run_seed(dataset, Path(tmp), seed, args, save))
            save()
    wall = time.perf_counter() - started
    log.info("done in %.0f s: %s", wall, args.out / "results.json")
    print(
        f"{args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, budget {args.budget}, "
        f"device {args.device}, seeds {args.seeds}; held-out mAP50-95 on {args.data}; {wall:.0f} s"
    )
    print("\n".join(table(results, args.policies, summarise(results, args.policies))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

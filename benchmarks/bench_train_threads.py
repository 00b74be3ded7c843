"""CPU training speed: qcloop's thread count against ultralytics' own, in one run.

    .venv/bin/python -m benchmarks.bench_train_threads [--data DIR] [--epochs 3] [--imgsz 480]
        [--model-size n] [--batch 16] [--rounds 2] [--out .qcloop/bench/threads]

Ultralytics trains on the CPU with one core fewer than the machine has, at most 8
(``ultralytics.utils.NUM_THREADS``, one kept for data-loading processes), yet loads
the data in the training process itself there.
``components.train.train_yolo`` sets the training threads to every core the process may
use (``cpu_threads``: its affinity, capped by a cgroup CPU quota). This script trains
the same model on the same data with both thread counts, interleaved ``--rounds``
times, and prints the seconds per epoch (the median of each round's epochs, from
ultralytics' ``results.csv``; the first epoch is left out, it warms the caches) and
the speed-up of the median rounds. ``--data`` is a dataset version folder or a plain
YOLO folder imported as in ``benchmarks.bench_recipes`` (default
../shared/datasets/metal-tags). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def epoch_seconds(results_csv: Path) -> list[float]:
    """Seconds of each epoch from ultralytics' ``results.csv`` (its ``time`` is cumulative)."""
    with open(results_csv, newline="") as fh:
        times = [float(row["time"]) for row in csv.DictReader(fh, skipinitialspace=True)]
    return [b - a for a, b in zip([0.0, *times], times, strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/metal-tags")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=480)
    parser.add_argument("--model-size", default="n")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / ".qcloop/bench/threads")
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be at least 2 (the first is left out), --rounds at least 1")
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder")

    from benchmarks.common import dataset_folder
    from components.recipes import model_config
    from components.threads import cpu_threads
    from components.train import train_yolo
    from qcloop.yolo_env import configure_offline

    configure_offline()
    from ultralytics.utils import NUM_THREADS  # what ultralytics' select_device sets on the CPU

    cores = cpu_threads()
    counts = {"ultralytics": NUM_THREADS, "qcloop": cores}
    model_cfg = model_config(args.model_size)
    print(
        f"bench_train_threads: {cores} usable cores; ultralytics would train on "
        f"{counts['ultralytics']} threads, qcloop trains on {counts['qcloop']}",
        flush=True,
    )
    seconds: dict[str, list[float]] = {name: [] for name in counts}
    with tempfile.TemporaryDirectory(prefix="qcloop-threads-") as tmp:
        dataset = dataset_folder(args.data.resolve(), Path(tmp))
        for round_ in range(1, args.rounds + 1):
            for name, threads in counts.items():
                out = Path(tmp) / f"{name}-{round_}"
                train_yolo(
                    dataset,
                    out,
                    epochs=args.epochs,
                    imgsz=args.imgsz,
                    batch=args.batch,
                    model_cfg=model_cfg,
                    device="cpu",
                    recipe="reference",
                    threads=threads,
                )
                epochs = epoch_seconds(out / "run" / "results.csv")[1:]
                seconds[name].append(statistics.median(epochs))
                print(
                    f"bench_train_threads: round {round_}, {name} ({threads} threads): "
                    f"{seconds[name][-1]:.1f} s/epoch",
                    flush=True,
                )
    base = statistics.median(seconds["ultralytics"])
    ours = statistics.median(seconds["qcloop"])
    result = {
        "cores": cores,
        "threads": counts,
        "model_size": args.model_size,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "s_per_epoch": {name: round(statistics.median(v), 2) for name, v in seconds.items()},
        "speedup": round(base / ours, 2),
    }
    print("| threads | s per epoch (median of rounds) |")
    print("| --- | --- |")
    for name, threads in counts.items():
        print(f"| {name}: {threads} | {statistics.median(seconds[name]):.1f} |")
    print(f"speed-up of qcloop's threads: {result['speedup']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"bench_train_threads: wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

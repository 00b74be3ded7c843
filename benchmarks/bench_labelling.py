#!/usr/bin/env python
"""Benchmark the labelling sync against a real, local Label Studio.

1. sync-in N raw images, each with 1-3 predicted boxes (pre-annotations), in
   batches of ``--batch-size`` tasks a request; the baseline, in the same run: the
   same N images synced into another project with one task a request (the way a
   script that calls the import API per image does it);
2. export + convert + version N annotated tasks (import them as labelled tasks
   first, then one round: export JSON -> YOLO folder -> DVC dataset version).

Images are real metal tags, re-encoded with a stamp so that all N are distinct.
Everything lives in a temp folder; the server is started and stopped here.

Usage: .venv/bin/python -m benchmarks.bench_labelling [--images 1000] [--batch-size 100]
Prints one JSON object with the figures (docs/performance.md, "Labelling throughput"), then
the batched sync-in against its one-task-a-request baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from pipelines.broker import free_port
from qcloop.contracts import Detection, ModelRef, RawImageSidecar
from qcloop.settings import Settings, StoreSettings
from qcloop.storage import open_store, put_raw_image, raw_key, sha256_bytes
from qcloop_labelling.client import connect
from qcloop_labelling.import_labels import import_yolo
from qcloop_labelling.project import ensure_project
from qcloop_labelling.round import run_round
from qcloop_labelling.server import find_binary, local_server
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in

ROOT = Path(__file__).resolve().parents[1]

METAL_TAGS = ROOT.parent / "shared" / "datasets" / "metal-tags"


def _stamped(n: int, data: Path) -> tuple[str, bytes, list[str]]:
    """Image ``n``: a photo of YOLO folder ``data`` with a 2-pixel stamp (distinct bytes)
    and its YOLO lines."""
    sources = sorted((data / "images").glob("*.jpg"))
    src = sources[n % len(sources)]
    with Image.open(src) as img:
        img = img.convert("RGB")
        ImageDraw.Draw(img).point([(n % img.width, 0), (n // img.width, 1)], fill=(255, 0, 0))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
    lines = (data / "labels" / f"{src.stem}.txt").read_text().splitlines()
    return f"{src.stem}-b{n:05d}", buf.getvalue(), [ln for ln in lines if ln.strip()]


def _feedback(settings: Settings, n: int, rng: random.Random, source: Path) -> None:
    name, data, _ = _stamped(n, source)
    digest = sha256_bytes(data)
    boxes = [
        (x, y, x + rng.uniform(10, 120), y + rng.uniform(10, 80))
        for x, y in ((rng.uniform(0, 300), rng.uniform(0, 200)) for _ in range(rng.randint(1, 3)))
    ]
    put_raw_image(
        open_store(settings.store),
        data,
        RawImageSidecar(
            key=raw_key(digest),
            sha256=digest,
            width=450,
            height=300,
            source="bench",
            reason="low_confidence",
            original_name=f"{name}.jpg",
            model=ModelRef(name="qcloop-detector", version="1"),
            predictions=[
                Detection(label="scratch", score=round(rng.uniform(0.05, 0.5), 3), box=b)
                for b in boxes
            ],
        ),
    )


def _yolo_folder(dest: Path, count: int, offset: int, source: Path) -> Path:
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    (dest / "classes.txt").write_text("scratch\n")
    for n in range(offset, offset + count):
        name, data, lines = _stamped(n, source)
        (dest / "images" / f"{name}.jpg").write_bytes(data)
        (dest / "labels" / f"{name}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    return dest


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - start, 2)


def main() -> int:
    """Run both benchmarks and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--data",
        type=Path,
        default=METAL_TAGS,
        help="YOLO folder whose photos are stamped into distinct images (default: %(default)s)",
    )
    args = parser.parse_args()
    if not sorted((args.data / "images").glob("*.jpg")):
        parser.error(f"no *.jpg in {args.data / 'images'}: give a YOLO folder with --data")
    quiet = {"progress": lambda _: None}
    tmp = Path(tempfile.mkdtemp(prefix="qcloop-bench-labelling-"))
    try:
        settings = Settings(
            home=tmp / "home",
            workspace=tmp / "ws",
            store=StoreSettings(path=tmp / "store"),
            dvc={"remote": str(tmp / "remote")},
        )
        rng = random.Random(0)
        _, t_prepare = _timed(
            lambda: [_feedback(settings, n, rng, args.data) for n in range(args.images)]
        )
        folder = _yolo_folder(tmp / "yolo", args.images, offset=args.images, source=args.data)
        start = time.perf_counter()
        with local_server(find_binary(ROOT), tmp / "ls", free_port()) as server:
            t_start = round(time.perf_counter() - start, 1)
            base = {"url": server.url, "token": server.token}
            ls_in = LabelStudioSettings(**base, project_title="bench sync-in")
            ls_out = LabelStudioSettings(**base, project_title="bench round")
            client = connect(ls_in)
            p_in = ensure_project(client, ls_in.project_title, ["scratch"]).id
            p_base = ensure_project(client, "bench sync-in, one task a request", ["scratch"]).id
            p_out = ensure_project(client, ls_out.project_title, ["scratch"]).id
            report, t_sync_in = _timed(
                lambda: sync_in(settings, client, p_in, batch_size=args.batch_size, **quiet)
            )
            baseline, t_baseline = _timed(
                lambda: sync_in(settings, client, p_base, batch_size=1, **quiet)
            )
            again, t_sync_in_again = _timed(lambda: sync_in(settings, client, p_in, **quiet))
            imported, t_import = _timed(
                lambda: import_yolo(
                    settings, client, p_out, folder, batch_size=args.batch_size, **quiet
                )
            )
            result, t_round = _timed(lambda: run_round(settings, client, p_out, **quiet))
            export, t_export = _timed(lambda: client.export_json(p_out))
            client.close()
        db = tmp / "ls" / "label_studio.sqlite3"
        figures = {
            "images": args.images,
            "batch_size": args.batch_size,
            "server_first_start_s": t_start,
            "prepare_raw_images_s": t_prepare,
            "sync_in_s": t_sync_in,
            "sync_in_tasks_per_s": round(report.created / t_sync_in, 1),
            "sync_in_created": report.created,
            "sync_in_one_per_request_s": t_baseline,
            "sync_in_one_per_request_created": baseline.created,
            "sync_in_repeat_s": t_sync_in_again,
            "sync_in_repeat_created": again.created,
            "import_annotated_s": t_import,
            "import_annotated_created": imported.created,
            "round_s": t_round,
            "round_counts": result.export.counts,
            "round_version": result.manifest.version if result.manifest else None,
            "export_json_only_s": t_export,
            "export_json_mb": round(len(json.dumps(export)) / 1e6, 1),
            "label_studio_db_mb": round(db.stat().st_size / 1e6, 1) if db.exists() else None,
        }
        print(json.dumps(figures, indent=2))
        speedup = t_baseline / t_sync_in if t_sync_in else float("inf")
        print(
            f"sync-in of {report.created} tasks: {t_sync_in} s in batches of {args.batch_size}, "
            f"{t_baseline} s one task a request (same run): {speedup:.1f}x faster"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``qcloop config``, ``schemas``, ``dataset ...`` and ``raw``: settings, contracts and data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.common import SubParsers, add, group
from qcloop.raw import DEFAULT_SOURCE
from qcloop.settings import Settings


def _config(args: argparse.Namespace, settings: Settings) -> int:
    print(settings.model_dump_json(indent=2))  # SecretStr fields print as '**********'
    return 0


def _schemas(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.contracts import export_schemas

    for path in export_schemas(Path(args.out)):
        print(path)
    return 0


def _synth(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.synthetic import generate_yolo_dataset

    out = generate_yolo_dataset(Path(args.out), shots=args.shots, seed=args.seed)
    print(f"wrote {args.shots * 4} synthetic images to {out}")
    return 0


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.dataset import import_yolo_folder

    manifest, created = import_yolo_folder(settings, Path(args.folder), commit=args.commit)
    counts = {split: c.model_dump() for split, c in manifest.counts.items()}
    print(json.dumps({"version": manifest.version, "created": created, "counts": counts}))
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.dataset import known_versions

    for version in known_versions(settings):
        print(version)
    return 0


def _pull(args: argparse.Namespace, settings: Settings) -> int:
    from components.attempts import LATEST
    from qcloop.dataset import materialize, materialize_split, newest_version

    version = newest_version(settings) if args.version == LATEST else args.version
    if args.split:
        count = materialize_split(settings, version, args.split, Path(args.out))
        print(f"{version} {args.split}: {count} images in {args.out} (a YOLO folder)")
        return 0
    manifest = materialize(settings, version, Path(args.out))
    print(f"{manifest.version}: {len(manifest.images)} images in {args.out}")
    return 0


def _raw(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.storage import list_raw_images, open_store

    for sidecar in list_raw_images(open_store(settings.store)):
        best = max((d.score for d in sidecar.predictions), default=None)
        print(f"{sidecar.key}\t{sidecar.reason}\t{sidecar.source}\tbest={best}")
    return 0


def _raw_add(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from qcloop.raw import add_raw_images
    from qcloop.storage import open_store

    report = add_raw_images(
        open_store(settings.store),
        [Path(p) for p in args.paths],
        source=args.source,
        skip_bad=args.skip_bad,
    )
    print(json.dumps({k: v for k, v in asdict(report).items() if k != "keys"}))
    return 0


def register(sub: SubParsers) -> None:
    """Add the settings, contracts and data commands to the ``qcloop`` parser."""
    add(sub, "config", _config, "print the effective settings (secrets masked)")
    add(sub, "schemas", _schemas, "write the JSON Schemas of the contracts").add_argument(
        "--out", default="docs/schemas"
    )
    ds = group(sub, "dataset", "dataset versions (YOLO layout, DVC)")
    p = add(ds, "synth", _synth, "generate a synthetic YOLO folder of metal tags")
    p.add_argument("--out", required=True)
    p.add_argument("--shots", type=int, default=12, help="camera shots (4 crops each)")
    p.add_argument("--seed", type=int, default=0)
    p = add(ds, "import", _import, "import a YOLO folder as a new dataset version")
    p.add_argument("folder")
    p.add_argument("--commit", action="store_true", help="git commit data.dvc, naming the change")
    add(ds, "list", _list, "list dataset versions")
    p = add(ds, "pull", _pull, "materialise a dataset version into a folder")
    p.add_argument("version", help="e.g. v1 (qcloop dataset list), or 'latest' for the newest")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        help="only this split, as a plain YOLO folder (e.g. for `qcloop eval`)",
    )
    raw = add(sub, "raw", _raw, "the raw store: list it (no action, or list), add images")
    raw_actions = raw.add_subparsers(dest="raw_command", metavar="ACTION")
    add(raw_actions, "list", _raw, "list images in the raw store (with reason and best score)")
    p = add(raw_actions, "add", _raw_add, "add unlabelled images (new captures, manual uploads)")
    p.add_argument("paths", nargs="+", metavar="FOLDER|FILE", help="images, or folders of them")
    p.add_argument(
        "--source", default=DEFAULT_SOURCE, help="where they come from: camera, line, uploader"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="add the good images when some files are bad"
    )

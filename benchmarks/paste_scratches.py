"""More scratches for training: real scratch marks pasted onto clean places of other tags.

    .venv/bin/python -m benchmarks.paste_scratches --data DATASET_VERSION_DIR --out DIR
        [--per-photo 1] [--seed 0] [--preview preview.png]

A scratch on the metal tags is a bright, thin mark on a darker plate: what a photo has
left after its blur (its shading) is taken away is the mark, and little else
(``bench_label_agreement.marks``; benchmarks/paste.py). ``paste_copy`` takes those marks
inside every labelled box of the train split (the mark bank: only the pixels brighter than the
photo's own fine texture, so that no brushing or noise travels with them), and adds
``per_photo`` of them, mirrored at random, to every train photo: each at a place of
the plate that is as bright as the mark's own background, with no edge, hole or other
label there, its box the source label's box moved there. Val and test photos are
untouched, so a model trained on the copy is scored on the same labels; the copy keeps
the dataset's size, so training on it costs what training on the original does.

For benchmarks.bench_recipes's ``+paste`` variants (``reference+paste``: does a model
learn more from 50 % more scratches, on the same photos, than from the photos alone?):
the same photo pasted the same way every epoch. The ``paste`` training recipe
(benchmarks/paste.py) pastes anew each time a photo is loaded.
``--preview`` draws a few pasted photos (labels red, pasted boxes green) to look at
before training on them. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.paste import Mark, box_pixels, marks_in, paste_marks

ROOT = Path(__file__).resolve().parents[1]


def _labels(label: Path, width: int, height: int, classes: int) -> tuple[Any, Any]:
    """The label file's ``YoloBox`` es, and the same as integer xyxy pixels inside the
    photo (n x 4, ``benchmarks.paste.box_pixels``)."""
    from qcloop.yolo import parse_label_file

    found = parse_label_file(label, classes)[0] if label.is_file() else ()
    return found, box_pixels([(b.cx, b.cy, b.w, b.h) for b in found], width, height)


class Photo(NamedTuple):
    """A labelled photo as ``paste_copy`` works on it: its grayscale pixels and shading
    (``bench_label_agreement.gray_and_shading``), its label file's ``YoloBox`` es and
    the same boxes in pixels (``_labels``)."""

    gray: Any
    shading: Any
    labels: tuple[Any, ...]
    boxes: Any


def load_photo(root: Path, img: Any, classes: int) -> Photo:
    """Manifest image ``img`` under ``root``, read once for the mark bank and the paste."""
    from benchmarks.bench_label_agreement import gray_and_shading

    return Photo(
        *gray_and_shading(root / img.file),
        *_labels(root / img.label_file, img.width, img.height, classes),
    )


def mark_bank(photos: list[Photo]) -> list[Mark]:
    """The marks inside every label of ``photos`` (``benchmarks.paste.marks_in``)."""
    bank = []
    for photo in photos:
        classes = [box.class_id for box in photo.labels]
        bank.extend(marks_in(photo.gray, photo.shading, photo.boxes, classes))
    return bank


def paste_copy(
    dataset: Path, dest: Path, per_photo: int = 1, seed: int = 0, split: str = "train"
) -> int:
    """``dest``: a copy of dataset version folder ``dataset`` in which every photo of
    ``split`` that has a label carries ``per_photo`` more scratches (``paste_marks``,
    marks from the labels of ``split`` only; defect-free photos stay so), written as
    the photo (JPEG, quality 95) with its label file, manifest counts and checksums
    updated; the other splits untouched. Returns the number of marks pasted."""
    import numpy as np
    from PIL import Image
    from ultralytics.utils.ops import xyxy2xywhn

    from benchmarks.common import save_manifest_copy
    from qcloop.contracts import DatasetManifest
    from qcloop.storage import sha256_file
    from qcloop.yolo import YoloBox

    if per_photo < 1:
        raise ValueError(f"per_photo {per_photo}: paste 1 or more marks per photo")
    manifest = DatasetManifest.load(dataset / "manifest.json")
    classes = len(manifest.class_names)
    photos = {
        img.file: load_photo(dataset, img, classes) for img in manifest.images if img.split == split
    }
    bank = mark_bank(list(photos.values()))
    if not bank:
        raise ValueError(f"{dataset}: no labelled scratch in the {split} split to paste")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(dataset, dest, ignore=shutil.ignore_patterns("*.cache", ".*"))
    rng = np.random.default_rng(seed)
    images, total = [], 0
    for img in manifest.images:
        if img.split != split or img.boxes == 0:  # defect-free photos are real negatives
            images.append(img)
            continue
        source = photos[img.file]
        out, pasted = paste_marks(
            source.gray, source.shading, list(source.boxes), bank, per_photo, rng
        )
        photo = dest / img.file
        Image.fromarray(out.astype(np.uint8)).convert("RGB").save(photo, format="JPEG", quality=95)
        normal = xyxy2xywhn(
            np.array([box for _, box in pasted], dtype=float).reshape(-1, 4),
            w=img.width,
            h=img.height,
        )
        new = [
            YoloBox(class_id, *map(float, row))
            for (class_id, _), row in zip(pasted, normal, strict=True)
        ]
        label = dest / img.label_file
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(box.line() + "\n" for box in (*source.labels, *new)))
        total += len(pasted)
        images.append(
            img.model_copy(
                update={
                    "boxes": img.boxes + len(pasted),
                    "sha256": sha256_file(photo),
                }
            )
        )
    save_manifest_copy(
        manifest, images, f"{manifest.source} ({total} scratches pasted into {split})", dest
    )
    return total


def preview(dataset: Path, original: Path, out: Path, photos: int = 4) -> Path:
    """A grid of the first ``photos`` labelled train photos of pasted copy ``dataset``: the
    original labels (those of ``original``'s same photo) red, the pasted ones green."""
    from PIL import Image, ImageDraw

    from qcloop.contracts import DatasetManifest

    manifest = DatasetManifest.load(dataset / "manifest.json")
    classes = len(manifest.class_names)
    shown = [img for img in manifest.images if img.split == "train" and img.boxes][:photos]
    if not shown:
        raise ValueError(f"{dataset}: no labelled train photo to preview")
    width, height = shown[0].width, shown[0].height
    grid = Image.new("RGB", (2 * width, ((len(shown) + 1) // 2) * height))
    for index, img in enumerate(shown):
        photo = Image.open(dataset / img.file).convert("RGB")
        draw = ImageDraw.Draw(photo)
        before = len(_labels(original / img.label_file, img.width, img.height, classes)[0])
        boxes = _labels(dataset / img.label_file, img.width, img.height, classes)[1]
        for k, box in enumerate(boxes):
            draw.rectangle(
                [int(v) for v in box], outline=(255, 0, 0) if k < before else (0, 255, 0)
            )
        grid.paste(photo, ((index % 2) * width, (index // 2) * height))
    grid.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Copy a dataset version with real scratch marks pasted into its train photos."
    )
    parser.add_argument("--data", type=Path, required=True, help="a dataset version folder")
    parser.add_argument("--out", type=Path, required=True, help="the copy (replaced if there)")
    parser.add_argument("--per-photo", type=int, default=1, help="marks added per train photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", type=Path, help="also draw 4 pasted photos into this PNG")
    args = parser.parse_args(argv)
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    if not (args.data / "manifest.json").is_file():
        print(
            f"paste_scratches: {args.data}: no manifest.json; give a dataset version folder "
            "(qcloop dataset pull v1 --out DIR)",
            file=sys.stderr,
        )
        return 2
    try:
        total = paste_copy(args.data, args.out, args.per_photo, args.seed)
    except ValueError as exc:
        print(f"paste_scratches: {exc}", file=sys.stderr)
        return 2
    print(f"paste_scratches: {total} marks pasted into the train photos of {args.out}")
    if args.preview:
        try:
            print(f"paste_scratches: preview {preview(args.out, args.data, args.preview)}")
        except ValueError as exc:
            print(f"paste_scratches: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

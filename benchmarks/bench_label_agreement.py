"""How well do a dataset's labels agree with themselves? Photos of the same part, compared.

    .venv/bin/python -m benchmarks.bench_label_agreement [--data DIR] [--similarity 0.97]
        [--folds 6] [--out FILE.json]

A line photographs the same part again and again (the metal tags: the same tag in
several captures, its scratches where they were). Two photos of one part should carry
the same boxes; where they do not, the labels disagree with themselves, and no model
can score above that disagreement on average. This script finds the photos of the same
part in a YOLO folder (``--data``, default ../shared/datasets/metal-tags): each photo's
bright thin marks (the image minus its Gaussian blur, sigma 8 px), reduced to 90x60,
are correlated with every other photo's, and photos whose correlation exceeds
``--similarity`` are one part (joined transitively). Each pair of photos of a part is
aligned by phase correlation of those marks, and the labels of one photo, moved by the
offset, are matched to the other's, both ways, by ultralytics' validator's own
matching (one to one, at each IoU threshold 0.50 ... 0.95).

It prints, for all photos and for each block of captures as ``benchmarks.bench_recipes
--folds`` cuts them (block i is the test split of fold i):

- the photos of parts photographed more than once, and the comparisons: each ordered
  pair of photos of a part (labels of photo A against those of photo B), in the block
  of photo B (as a test photo of that fold would be scored);
- comparisons whose box counts differ (a scratch boxed on one photo and not on the
  other, or cut into more boxes);
- agreement at IoU 0.50 and 0.75 and its mean over 0.50-0.95: the share of one photo's
  boxes matched one to one by a box of the other photo at that IoU (precision and
  recall are equal here: every pair is scored both ways). It is not an mAP (labels
  have no confidence to rank by) but it bounds one: a model that drew exactly one
  photo's boxes would be marked wrong on the other photo's where these disagree.

Results go to ``--out`` (default ``.qcloop/bench/label-agreement.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import bench_snapshots, common

ROOT = Path(__file__).resolve().parents[1]

MARKS_SIZE = (90, 60)  # (width, height) the marks are compared at
BLUR = 8  # px: what the blur removes is shading; what is left, the marks


def gray_and_shading(image: Path) -> tuple[Any, Any]:
    """A photo's grayscale pixels and their blur (its shading: what is left of the
    photo without the marks), both float32."""
    import numpy as np
    from PIL import Image, ImageFilter

    gray = Image.open(image).convert("L")
    blurred = gray.filter(ImageFilter.GaussianBlur(BLUR))
    return np.asarray(gray, np.float32), np.asarray(blurred, np.float32)


def marks(image: Path, size: tuple[int, int] | None = None) -> Any:
    """The bright thin marks of a photo (grayscale minus its blur, negatives 0), float32;
    reduced to ``size`` (width, height) if given."""
    import numpy as np
    from PIL import Image

    gray, shading = gray_and_shading(image)
    found = np.clip(gray - shading, 0, None)
    if size is None:
        return found
    return np.asarray(Image.fromarray(found).resize(size, Image.BILINEAR), np.float32)


def same_parts(images: list[Path], similarity: float) -> list[list[int]]:
    """The photos of each part (indices into ``images``), largest part first: photos
    whose reduced marks correlate above ``similarity`` are one part, transitively."""
    import numpy as np

    vectors = []
    for image in images:
        v = marks(image, MARKS_SIZE).ravel()
        v = v - v.mean()
        vectors.append(v / (np.linalg.norm(v) or 1.0))
    correlation = np.stack(vectors) @ np.stack(vectors).T
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(correlation, 1) > similarity), strict=True):
        parent[root(int(i))] = root(int(j))
    parts: dict[int, list[int]] = {}
    for i in range(len(images)):
        parts.setdefault(root(i), []).append(i)
    return sorted(parts.values(), key=lambda p: (-len(p), p))


def offset(a: Any, b: Any) -> tuple[int, int]:
    """(dx, dy) in pixels such that photo ``b``'s marks are ``a``'s moved by it (phase
    correlation; both the same shape)."""
    import numpy as np

    cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    peak = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = (int(v) for v in np.unravel_index(int(np.argmax(peak)), peak.shape))
    height, width = peak.shape
    return (dx - width if dx > width // 2 else dx), (dy - height if dy > height // 2 else dy)


def pixel_boxes(boxes: Any, width: int, height: int) -> Any:
    """``qcloop.yolo.YoloBox`` es as xyxy pixels (n x 4) of a ``width`` x ``height`` photo."""
    import numpy as np
    from ultralytics.utils.ops import xywhn2xyxy

    rows = np.array([(b.cx, b.cy, b.w, b.h) for b in boxes], dtype=float).reshape(-1, 4)
    return xywhn2xyxy(rows, w=width, h=height)


def agreement(rows: list[Any]) -> dict[str, Any]:
    """The figures of ``rows`` ((moved labels, labels) of each ordered pair)."""
    matched = agreement_by_iou(rows)
    return {
        "agree_by_iou": [round(m, 4) for m in matched],
        "agree50": matched[0],
        "agree75": matched[5],
        "agree50_95": sum(matched) / len(matched),
    }


def agreement_by_iou(rows: list[Any]) -> list[float]:
    """At each IoU threshold 0.50 ... 0.95: the share of boxes matched one to one (the
    validator's matching, ``bench_snapshots.matched``) over all ordered pairs; 1 where no
    pair has a box."""
    import numpy as np

    hits, total = np.zeros(10), 0
    for moved, truth in rows:
        total += len(truth)
        hits += bench_snapshots.matched(moved, truth).sum(0)
    return [float(h / total) if total else 1.0 for h in hits]


def compare(data: Path, similarity: float, folds: int) -> dict[str, Any]:
    """All figures: parts, pairs and agreement, overall and by block of captures."""
    import numpy as np

    from qcloop.yolo import capture_group, scan_yolo_folder

    _, items = scan_yolo_folder(data)
    images = [item.image for item in items]
    parts = same_parts(images, similarity)
    groups = [capture_group(item.stem) for item in items]
    blocks = common.fold_blocks(groups, folds)
    block_of = {group: b for b, block in enumerate(blocks) for group in block}
    found: dict[str, list[Any]] = {"all": []}
    counts: dict[str, dict[str, int]] = {}
    for part in parts:
        if len(part) < 2:
            continue
        photo = {i: marks(images[i]) for i in part}
        for a in part:
            for b in part:
                if a == b:
                    continue
                dx, dy = offset(photo[a], photo[b])
                moved = pixel_boxes(items[a].boxes, items[a].width, items[a].height)
                moved = moved + np.array([dx, dy, dx, dy], dtype=float)
                truth = pixel_boxes(items[b].boxes, items[b].width, items[b].height)
                row = (moved, truth)
                for key in ("all", f"block {block_of[groups[b]]}"):
                    found.setdefault(key, []).append(row)
                    c = counts.setdefault(key, {"photos": 0, "comparisons": 0, "counts_differ": 0})
                    c["comparisons"] += 1
                    c["counts_differ"] += len(moved) != len(truth)
        for i in part:
            for key in ("all", f"block {block_of[groups[i]]}"):
                counts[key]["photos"] += 1
    keys = ["all"] + [f"block {b}" for b in range(len(blocks)) if f"block {b}" in found]
    return {
        "data": str(data),
        "similarity": similarity,
        "photos": len(items),
        "parts": len(parts),
        "parts_photographed_again": sum(len(p) > 1 for p in parts),
        "rows": [{"photos of": k, **counts[k], **agreement(found[k])} for k in keys],
    }


def consensus_copy(
    dataset: Path, dest: Path, split: str = "train", similarity: float = 0.97
) -> int:
    """``dest``: a copy of dataset version folder ``dataset`` in which the photos of
    ``split`` that show a part photographed again within ``split`` all carry the labels
    of that part's medoid photo (the one whose labels agree best with the others', mean
    agreement over IoU 0.50-0.95), moved by each photo's offset and clipped to it; the
    other splits' labels are untouched, so a model trained on it is scored on the same
    test labels. For benchmarks.bench_recipes's ``+consensus`` variants: do labels
    drawn one way per part train a better model? Returns the number of photos whose
    labels changed."""
    import shutil

    from qcloop.contracts import DatasetManifest
    from qcloop.yolo import parse_label_file

    manifest = DatasetManifest.load(dataset / "manifest.json")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(dataset, dest, ignore=shutil.ignore_patterns("*.cache", ".*"))
    photos = [img for img in manifest.images if img.split == split]
    boxes = []
    for img in photos:
        label = dest / img.label_file
        found = parse_label_file(label, len(manifest.class_names))[0] if label.is_file() else ()
        boxes.append(tuple(found))
    changed = 0
    for part in same_parts([dest / img.file for img in photos], similarity):
        if len(part) < 2:
            continue
        for index, new in _drawn_one_way(dest, [photos[i] for i in part], [boxes[i] for i in part]):
            label = dest / photos[part[index]].label_file
            text = "".join(box.line() + "\n" for box in new)
            changed += text != "".join(box.line() + "\n" for box in boxes[part[index]])
            label.write_text(text)
    return changed


def _drawn_one_way(root: Path, photos: list[Any], boxes: list[Any]) -> list[tuple[int, list[Any]]]:
    """For the photos of one part (manifest images under ``root``, their ``YoloBox`` es):
    (index, new boxes) of every photo but the medoid, which lends them its boxes."""
    import numpy as np
    from ultralytics.utils.ops import xyxy2xywhn

    from qcloop.yolo import YoloBox

    seen = [marks(root / img.file) for img in photos]
    pixels = [pixel_boxes(b, img.width, img.height) for b, img in zip(boxes, photos, strict=True)]
    moves = {
        (a, b): pixels[a] + np.array([*offset(seen[a], seen[b])] * 2, dtype=float)
        for a in range(len(photos))
        for b in range(len(photos))
        if a != b
    }
    agree = {
        pair: sum(agreement_by_iou([(moved, pixels[pair[1]])])) for pair, moved in moves.items()
    }
    others = range(len(photos))
    # rounded, so that photos whose labels agree equally well tie exactly: the first wins
    medoid = max(others, key=lambda a: (round(sum(agree[a, b] for b in others if b != a), 6), -a))
    drawn = []
    for b, img in enumerate(photos):
        if b == medoid:
            continue
        size = np.array([img.width, img.height, img.width, img.height], dtype=float)
        placed = np.clip(moves[medoid, b], 0, size)
        # a box moved off the photo (under 2 px left) is dropped
        keep = [k for k, (x1, y1, x2, y2) in enumerate(placed) if x2 - x1 >= 2 and y2 - y1 >= 2]
        normal = xyxy2xywhn(placed[keep].reshape(-1, 4), w=img.width, h=img.height)
        drawn.append(
            (
                b,
                [
                    YoloBox(boxes[medoid][k].class_id, *map(float, row))
                    for k, row in zip(keep, normal, strict=True)
                ],
            )
        )
    return drawn


def table(result: dict[str, Any]) -> list[str]:
    """The markdown table of ``compare``'s rows."""
    lines = [
        "| photos of | photos of a part seen again | comparisons | box counts differ "
        "| agreement IoU .50 | .75 "
        "| .50-.95 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['photos of']} | {r['photos']} | {r['comparisons']} | {r['counts_differ']} "
            f"| {r['agree50']:.3f} | {r['agree75']:.3f} | {r['agree50_95']:.3f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description="How well a YOLO folder's labels agree on photos of the same part."
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared/datasets/metal-tags",
        help="a YOLO folder: images/, labels/, classes.txt (default ../shared/datasets/metal-tags)",
    )
    parser.add_argument(
        "--similarity",
        type=float,
        default=0.97,
        help="correlation of two photos' marks above which they show one part (default 0.97)",
    )
    parser.add_argument(
        "--folds", type=int, default=6, help="blocks of captures, as bench_recipes --folds"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / ".qcloop" / "bench" / "label-agreement.json"
    )
    args = parser.parse_args()
    from benchmarks.common import configure_bench_logging

    configure_bench_logging()
    if not 0.0 < args.similarity < 1.0:
        print(f"bench_label_agreement: --similarity {args.similarity}: use 0-1", file=sys.stderr)
        return 2
    try:
        result = compare(args.data, args.similarity, args.folds)
    except Exception as exc:
        print(f"bench_label_agreement: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"{result['photos']} photos of {result['parts']} parts, "
        f"{result['parts_photographed_again']} photographed more than once "
        f"(marks correlated > {args.similarity}); the labels of each photo matched to "
        "those of every other photo of its part, aligned:"
    )
    print("\n".join(table(result)))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

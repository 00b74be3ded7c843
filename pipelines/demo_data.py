"""What the quickstart's loop sees: a first labelled set, and the camera's frames of each round.

A loop needs parts the model has not seen. The demo splits its data in two: the
first dataset version, and the frames the camera shows in rounds 1..N (each a YOLO
folder, so that the stand-in annotator knows their true boxes).

- Synthetic data: the generator makes the first set (``shots`` x 4 crops) and, with
  another seed per round, that round's frames.
- A YOLO folder: whole captures (the crops of one shot) go to the first set, half of
  them and at least ``MIN_FIRST_CAPTURES`` (a test split needs one capture of its own);
  the images of the other captures, in capture order, are the frames of rounds 1..N.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from qcloop.errors import DatasetError
from qcloop.synthetic import generate_yolo_dataset
from qcloop.yolo import YoloItem, capture_group, scan_yolo_folder

MIN_FIRST_CAPTURES = 3


@dataclass(frozen=True)
class LoopData:
    """The first dataset's YOLO folder, and one YOLO folder of camera frames a round."""

    first: Path
    rounds: list[Path]

    def frames(self, round_number: int) -> list[Path]:
        """The images the camera shows in round ``round_number`` (1-based), by name."""
        return sorted((self.rounds[round_number - 1] / "images").iterdir())


def synthetic_loop_data(home: Path, *, shots: int, frames: int, rounds: int) -> LoopData:
    """Generated: ``shots`` x 4 crops first, then ``frames`` new crops a round."""
    first = generate_yolo_dataset(home / "synthetic" / "first", shots=shots, seed=0)
    per_round = [
        _trimmed(
            generate_yolo_dataset(
                home / "synthetic" / f"camera-{n}", shots=math.ceil(frames / 4), seed=n
            ),
            frames,
        )
        for n in range(1, rounds + 1)
    ]
    return LoopData(first, per_round)


def folder_loop_data(source: Path, home: Path, *, frames: int, rounds: int) -> LoopData:
    """A YOLO folder split by capture: the first set, then up to ``frames`` images a round."""
    names, items = scan_yolo_folder(source)
    groups = sorted({capture_group(i.stem) for i in items})
    first_count = max(MIN_FIRST_CAPTURES, math.ceil(len(groups) / 2))
    if len(groups) <= first_count or len(items) - _count(items, groups[:first_count]) < rounds:
        raise DatasetError(
            f"{source}: {len(groups)} captures, {len(items)} images; --rounds {rounds} needs "
            f"{first_count} captures for the first version and at least one more image a "
            "round from other captures: give a larger folder or fewer rounds"
        )
    first_groups = set(groups[:first_count])
    later = sorted(
        (i for i in items if capture_group(i.stem) not in first_groups),
        key=lambda i: (capture_group(i.stem), i.stem),
    )
    size = min(frames, math.ceil(len(later) / rounds))
    first = _copy(
        names, [i for i in items if capture_group(i.stem) in first_groups], home / "first"
    )
    per_round = [
        _copy(names, later[n * size : (n + 1) * size], home / f"camera-{n + 1}")
        for n in range(rounds)
    ]
    empty = [n + 1 for n, folder in enumerate(per_round) if not any((folder / "images").iterdir())]
    if empty:
        raise DatasetError(f"{source}: no frames left for round(s) {empty}; use fewer --frames")
    return LoopData(first, per_round)


def _count(items: list[YoloItem], groups: list[str]) -> int:
    chosen = set(groups)
    return sum(1 for i in items if capture_group(i.stem) in chosen)


def _copy(names: list[str], items: list[YoloItem], dest: Path) -> Path:
    """A YOLO folder of copies of ``items`` (the source stays untouched)."""
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    (dest / "classes.txt").write_text("\n".join(names) + "\n")
    for item in items:
        shutil.copyfile(item.image, dest / "images" / item.image.name)
        shutil.copyfile(item.label, dest / "labels" / item.label.name)
    return dest


def _trimmed(folder: Path, frames: int) -> Path:
    """Keep the first ``frames`` images (and labels) of a generated folder."""
    for image in sorted((folder / "images").iterdir())[frames:]:
        image.unlink()
        (folder / "labels" / f"{image.stem}.txt").unlink()
    return folder

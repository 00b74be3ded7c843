"""The demo's pieces that need no service: how data is split into rounds, the loop report."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.demo_data import folder_loop_data, synthetic_loop_data
from pipelines.loop_report import html_page, markdown, write_reports
from qcloop.errors import DatasetError
from qcloop.yolo import capture_group, scan_yolo_folder


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "images").iterdir())


def test_a_yolo_folder_splits_into_whole_first_captures_and_unseen_frames(
    metal_tags: Path, tmp_path: Path
) -> None:
    # when the 16-photo sample (4 captures) is split for two rounds
    data = folder_loop_data(metal_tags, tmp_path, frames=8, rounds=2)
    # then the first version holds three whole captures (a test split needs one)
    first = _stems(data.first)
    assert len(first) == 12
    first_groups = {capture_group(s) for s in first}
    assert len(first_groups) == 3
    # and each round's frames come from the other capture, none shown twice
    frames = [_stems(folder) for folder in data.rounds]
    assert [len(f) for f in frames] == [2, 2]
    shown = frames[0] + frames[1]
    assert len(set(shown)) == 4
    assert not {capture_group(s) for s in shown} & first_groups
    assert [p.stem for p in data.frames(1)] == frames[0]
    # every folder is a valid YOLO folder with the source's labels
    for folder in [data.first, *data.rounds]:
        _, items = scan_yolo_folder(folder)
        for item in items:
            assert item.label.read_text() == (metal_tags / "labels" / item.label.name).read_text()


def test_too_small_a_folder_for_the_rounds_is_refused_by_name(
    metal_tags: Path, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match=r"4 captures, 16 images; --rounds 5 needs 3 captures"):
        folder_loop_data(metal_tags, tmp_path, frames=8, rounds=5)


def test_synthetic_rounds_get_new_frames_each(tmp_path: Path) -> None:
    data = synthetic_loop_data(tmp_path, shots=2, frames=6, rounds=2)
    assert len(_stems(data.first)) == 8
    frames = [set(_stems(folder)) for folder in data.rounds]
    assert [len(f) for f in frames] == [6, 6]
    assert not frames[0] & frames[1]
    assert not (frames[0] | frames[1]) & set(_stems(data.first))


ROUNDS = [
    {
        "round": 1,
        "dataset_version": "v1",
        "parent_version": None,
        "images_labelled": 12,
        "new_images_from_feedback": 0,
        "model_version": "1",
        "metrics": {"map50_95": 0.41, "map50_95_low": 0.3, "map50_95_high": 0.5},
        "gate_passed": True,
        "gate_reason": "no production model to beat",
        "production_version": "1",
        "serving_model_version": "1",
        "feedback_images": 3,
        "feedback_by_model": {"1": 3},
    },
    {
        "round": 2,
        "dataset_version": "v2",
        "parent_version": "v1",
        "images_labelled": 3,
        "new_images_from_feedback": 3,
        "model_version": None,
        "metrics": {"map50_95": 0.2},
        "gate_passed": False,
        "gate_reason": "more than tolerance <0.02> below production",
        "production_version": "1",
        "serving_model_version": "1",
        "feedback_images": 2,
        "feedback_by_model": {"1": 2},
    },
]


def test_the_loop_report_has_a_row_a_round_in_markdown_and_html(tmp_path: Path) -> None:
    text = markdown(ROUNDS)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # header, rule, 2 rounds
    assert (
        "| 1 | v1 (none) | 12 (0) | v1 | 0.410 (0.300..0.500) | passed | v1 | v1 | 3 (v1: 3) |"
        in text
    )
    assert (
        "| 2 | v2 (v1) | 3 (3) | not registered | 0.200 | refused | v1 | v1 | 2 (v1: 2) |" in text
    )
    page = html_page(ROUNDS)
    assert page.count("<tr>") == 3
    assert "&lt;0.02&gt;" in page and "<0.02>" not in page  # reasons are escaped
    md, html = write_reports(ROUNDS, tmp_path / "report")
    assert md.read_text() == text and html.read_text() == page

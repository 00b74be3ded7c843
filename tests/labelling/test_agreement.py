"""Agreement between labellers, pure: box-level F1 at IoU 0.5 per pair, task and export."""

from __future__ import annotations

import pytest

from qcloop.yolo import YoloBox
from qcloop_labelling.agreement import agreement, box_f1, by_annotator, task_agreement
from tests.labelling.helpers import rect

NAMES = ["scratch", "dent"]


def _annotation(aid: int, who: int, result: list[dict], **extra: object) -> dict:
    return {"id": aid, "completed_by": who, "updated_at": f"2026-01-01T00:00:{aid:02d}Z"} | {
        "result": result,
        "was_cancelled": False,
        **extra,
    }


def _task(tid: int, *annotations: dict) -> dict:
    return {"id": tid, "annotations": list(annotations)}


def test_identical_and_empty_boxes_agree_fully() -> None:
    # given two people who drew the same box, and two who both said "no defect"
    box = YoloBox(0, 0.5, 0.5, 0.2, 0.2)
    # when compared / then they agree fully
    assert box_f1([box], [box]) == 1.0
    assert box_f1([], []) == 1.0
    # and a box against no box is no agreement at all
    assert box_f1([box], []) == 0.0


def test_iou_half_is_the_line_and_classes_must_match() -> None:
    # given a box and one shifted so that IoU is exactly 0.5, one a little less, one of
    # another class at the same place
    a = YoloBox(0, 0.5, 0.5, 0.375, 0.25)  # x 0.3125..0.6875
    half = YoloBox(0, 0.625, 0.5, 0.375, 0.25)  # x 0.4375..0.8125: inter 0.25, union 0.5 wide
    less = YoloBox(0, 0.626, 0.5, 0.375, 0.25)
    other = YoloBox(1, 0.5, 0.5, 0.375, 0.25)
    # when compared / then IoU 0.5 matches, below it does not, another class never does
    assert box_f1([a], [half]) == 1.0
    assert box_f1([a], [less]) == 0.0
    assert box_f1([a], [other]) == 0.0


def test_matching_is_one_to_one_and_greedy_by_iou() -> None:
    # given one person's single box that overlaps both of another's two boxes
    a = [YoloBox(0, 0.5, 0.5, 0.2, 0.2)]
    b = [YoloBox(0, 0.5, 0.5, 0.2, 0.2), YoloBox(0, 0.51, 0.5, 0.2, 0.2)]
    # when compared / then only one match counts: F1 = 2 * 1 / (1 + 2)
    assert box_f1(a, b) == pytest.approx(2 / 3)
    # and the best overlap is taken first: each of two boxes finds its own twin
    c = [YoloBox(0, 0.50, 0.5, 0.2, 0.2), YoloBox(0, 0.58, 0.5, 0.2, 0.2)]
    d = [YoloBox(0, 0.57, 0.5, 0.2, 0.2), YoloBox(0, 0.51, 0.5, 0.2, 0.2)]
    assert box_f1(c, d) == 1.0


def test_a_task_needs_two_people_and_takes_each_ones_latest_annotation() -> None:
    # given a task annotated twice by one person (a correction) and once by another,
    # plus a skip by a third, and a task annotated by one person only
    first = _annotation(1, 7, [rect(10, 10, 20, 20)])
    corrected = _annotation(2, 7, [rect(50, 50, 10, 10)])
    other = _annotation(3, 8, [rect(50, 50, 10, 10)])
    skip = _annotation(4, 9, [], was_cancelled=True)
    task = _task(5, first, corrected, other, skip)
    # when each person's annotation is taken / then the correction stands, the skip not
    assert by_annotator(task) == {7: corrected, 8: other}
    result = task_agreement(task, NAMES)
    assert result is not None
    assert (result.task_id, result.annotators, result.f1) == (5, (7, 8), 1.0)
    assert task_agreement(_task(6, first, corrected), NAMES) is None


def test_three_people_give_three_pairs_and_the_task_their_mean() -> None:
    # given three people: two agree on one box, the third drew nothing
    box = [rect(10, 10, 20, 20)]
    task = _task(1, _annotation(1, 1, box), _annotation(2, 2, box), _annotation(3, 3, []))
    # when compared
    result = task_agreement(task, NAMES)
    # then pairs (1,2) = 1, (1,3) = 0, (2,3) = 0: the task's F1 is 1/3
    assert result is not None
    assert [(p.a, p.b, p.f1) for p in result.pairs] == [(1, 2, 1.0), (1, 3, 0.0), (2, 3, 0.0)]
    assert result.f1 == pytest.approx(1 / 3)


def test_export_summary_names_the_tasks_of_least_agreement() -> None:
    # given an export: 7 tasks with two annotators each (one agreeing, six disagreeing
    # more or less), a task with one annotator, and one with none
    box, near = rect(10, 10, 20, 20), rect(11, 10, 20, 20)
    tasks = [_task(100, _annotation(1, 1, [box]), _annotation(2, 2, [box]))]
    for n in range(6):  # task 101+n: n+1 of person 2's boxes are extra, unmatched
        extra = [rect(60, 5 + 10 * k, 5, 5) for k in range(n + 1)]
        tasks.append(
            _task(101 + n, _annotation(10 + n, 1, [box]), _annotation(20 + n, 2, [near, *extra]))
        )
    tasks += [_task(200, _annotation(30, 1, [box])), _task(201)]
    # when agreement is computed
    result = agreement(list(reversed(tasks)), NAMES)
    summary = result.summary()
    # then 7 tasks count, the lowest five are named worst first, and the mean is theirs
    assert summary["tasks"] == 7
    assert [t["task"] for t in summary["lowest"]] == [106, 105, 104, 103, 102]
    assert summary["lowest"][0] == {"task": 106, "f1": round(2 / 8, 4), "annotators": [1, 2]}
    expected = (1 + sum(2 / (3 + n) for n in range(6))) / 7
    assert summary["mean_f1"] == pytest.approx(expected, abs=1e-4)
    assert [t["task"] for t in result.details()["per_task"]] == list(range(100, 107))


def test_no_shared_task_gives_no_figure_and_bad_boxes_are_left_out() -> None:
    # given an export where nobody shares a task
    alone = [_task(1, _annotation(1, 1, [rect(10, 10, 20, 20)]))]
    # then there is no agreement figure, and nothing listed
    assert agreement(alone, NAMES).summary() == {"tasks": 0, "mean_f1": None, "lowest": []}
    # given two people whose only difference is a box with an unknown label
    box = rect(10, 10, 20, 20)
    task = _task(2, _annotation(2, 1, [box]), _annotation(3, 2, [box, rect(50, 50, 5, 5, "hole")]))
    # then that box, which the round reports as invalid, does not count against them
    result = task_agreement(task, NAMES)
    assert result is not None
    assert result.f1 == 1.0

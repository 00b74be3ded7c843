"""Pure parts, no server: box conversions, the annotation rule, the sync-in order."""

from __future__ import annotations

import pytest

from qcloop.contracts import Detection
from qcloop.yolo import YoloBox
from qcloop_labelling.boxes import detection_to_result, result_to_yolo, yolo_to_result
from qcloop_labelling.project import label_config
from qcloop_labelling.sync_out import chosen_annotation, classify
from tests.labelling.helpers import rect


def test_detection_becomes_percent_rectangle_with_score() -> None:
    result = detection_to_result(
        Detection(label="scratch", score=0.4, box=(45, 30, 90, 150)), 450, 300
    )
    value = result["value"]
    assert value.pop("rectanglelabels") == ["scratch"]
    assert value == pytest.approx(
        {"x": 10.0, "y": 10.0, "width": 10.0, "height": 40.0, "rotation": 0}
    )
    assert result["score"] == 0.4


def test_yolo_round_trips_through_label_studio() -> None:
    box = YoloBox(1, 0.512345, 0.25, 0.1, 0.2)
    back = result_to_yolo(yolo_to_result(box, ["scratch", "dent"], 450, 300), ["scratch", "dent"])
    assert back.class_id == 1
    assert (back.cx, back.cy, back.w, back.h) == pytest.approx((box.cx, box.cy, box.w, box.h))


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (rect(90, 10, 30, 20), "outside the image"),
        (rect(10, 10, 0, 5), "no area"),
        (rect(10, 10, 5, 5, "dent"), "not one of the known classes"),
        (rect(float("nan"), 10, 5, 5), "x=nan, not a finite number"),
        (rect(10, 10, float("inf"), float("nan")), "width=inf, height=nan, not a finite"),
    ],
)
def test_bad_rectangles_are_refused(result: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        result_to_yolo(result, ["scratch"])


def test_a_nan_box_is_refused_naming_the_task_not_turned_into_a_full_image_box() -> None:
    annotation = {"id": 3, "result": [rect(10, 10, 5, 5), rect(float("nan"), 0, 100, 100)]}
    outcome, problems = classify({"id": 41, "annotations": [annotation]}, ["scratch"])
    assert [p.line() for p in problems] == [
        "task 41 (annotation 3, box 2): box has x=nan, not a finite number; redraw it"
    ]
    assert len(outcome.boxes) == 1


def test_box_dragged_a_hair_past_the_border_is_clipped() -> None:
    box = result_to_yolo(rect(90, 0, 10.01, 50), ["scratch"])
    assert box.cx + box.w / 2 == pytest.approx(1.0)


def test_latest_submitted_annotation_wins_and_statuses() -> None:
    old = {"id": 1, "updated_at": "2026-01-01", "result": [rect(1, 1, 5, 5)]}
    new = {"id": 2, "updated_at": "2026-02-01", "result": []}
    skip = {"id": 3, "updated_at": "2026-03-01", "was_cancelled": True, "result": []}
    assert chosen_annotation({"annotations": [old, new, skip]}) is new
    assert classify({"id": 7, "annotations": [old, new, skip]}, ["scratch"])[0].status == "negative"
    assert classify({"id": 7, "annotations": [skip]}, ["scratch"])[0].status == "skipped"
    assert classify({"id": 7, "annotations": []}, ["scratch"])[0].status == "pending"
    outcome, problems = classify({"id": 7, "annotations": [old]}, ["scratch"])
    assert (outcome.status, problems) == ("labelled", [])


def test_label_config_lists_the_classes() -> None:
    config = label_config(["scratch", "dent"])
    assert config.count("<Label ") == 2 and 'value="dent"' in config


def test_pending_images_skip_known_and_labelled_and_put_least_sure_first() -> None:
    from qcloop.contracts import RawImageSidecar
    from qcloop_labelling.sync_in import pending_images

    def sidecar(sha: str, scores: list[float]) -> RawImageSidecar:
        dets = [Detection(label="scratch", score=s, box=(1, 1, 2, 2)) for s in scores]
        key = f"raw/{sha[:2]}/{sha}.jpg"
        return RawImageSidecar(
            key=key,
            sha256=sha,
            width=4,
            height=4,
            source="t",
            reason="low_confidence",
            predictions=dets,
        )

    scores = [[0.4], [], [0.9, 0.1], [0.2]]
    a, b, c, d = (sidecar(ch * 64, s) for ch, s in zip("abcd", scores, strict=True))
    todo = pending_images([a, b, c, d], in_project={"a" * 64}, in_dataset={"d" * 64})
    assert [s.sha256[0] for s in todo] == ["b", "c"]  # b: no box = 0, c: best 0.9


def test_with_review_on_only_accepted_annotations_count() -> None:
    box = {
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 100,
        "original_height": 100,
        "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["scratch"]},
    }
    submitted = {"id": 1, "updated_at": "2026-01-02", "result": [box]}
    starred = {"id": 2, "updated_at": "2026-01-01", "result": [], "ground_truth": True}
    reviewed = {
        "id": 3,
        "updated_at": "2026-01-01",
        "result": [box],
        "reviews": [{"accepted": True}],
    }
    task = {"id": 9, "annotations": [submitted]}
    assert classify(task, ["scratch"])[0].status == "labelled"  # review off: submitted counts
    assert classify(task, ["scratch"], review=True)[0].status == "pending"  # awaits a reviewer
    assert chosen_annotation({"annotations": [submitted, starred]}, review=True) is starred
    assert chosen_annotation({"annotations": [submitted, reviewed]}, review=True) is reviewed


def test_a_task_whose_image_is_gone_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from qcloop.storage import LocalStore
    from qcloop_labelling.errors import LabellingError
    from qcloop_labelling.sync_out import _image_bytes

    task = {"id": 5, "data": {"raw_key": "raw/aa/gone.jpg", "image": "s3://bucket/raw/aa/gone.jpg"}}
    with pytest.raises(LabellingError, match=r"task 5: image 'raw/aa/gone.jpg' is neither"):
        _image_bytes(task, LocalStore(tmp_path))


def test_image_of_another_size_or_unreadable_is_named() -> None:
    import io

    from PIL import Image

    from qcloop_labelling.sync_out import _size_problem

    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, format="JPEG")
    task = {"id": 8, "data": {"width": 40, "height": 30}}
    assert _size_problem(task, buf.getvalue(), 3) is None
    other = {"id": 8, "data": {"width": 450, "height": 300}}
    resized = _size_problem(other, buf.getvalue(), 3)
    assert resized is not None
    assert "task 8 (annotation 3): image is 40x30, the task recorded 450x300" in resized.line()
    unreadable = _size_problem(task, b"not an image", None)
    assert unreadable is not None and unreadable.line().startswith("task 8: image unreadable")


def test_an_image_replaced_under_its_content_address_is_named() -> None:
    import hashlib
    import io

    from PIL import Image

    from qcloop_labelling.sync_out import _size_problem

    def jpeg(colour: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buf, format="JPEG")
        return buf.getvalue()

    original, planted = jpeg("white"), jpeg("black")
    task = {"id": 9, "data": {"width": 40, "height": 30}}
    task["data"]["sha256"] = hashlib.sha256(original).hexdigest()
    assert _size_problem(task, original, 4) is None
    problem = _size_problem(task, planted, 4)
    assert problem is not None
    assert "task 9 (annotation 4): image bytes do not match the task's sha256" in problem.line()

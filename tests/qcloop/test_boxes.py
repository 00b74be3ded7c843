"""Box geometry on exact numbers: IoU (one to many, pairwise), greedy and class-wise NMS."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import qcloop.boxes
from qcloop.boxes import batched_nms, iou_matrix, iou_one_to_many, nms

SQUARE = np.array([0, 0, 10, 10], np.float32)
OTHERS = np.array([[1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32)


def test_iou_exact() -> None:
    assert iou_one_to_many(SQUARE, OTHERS).tolist() == pytest.approx([90 / 110, 0.0, 0.5])


def test_iou_matrix_is_every_pair() -> None:
    # given two boxes against three
    rows = np.stack([SQUARE, OTHERS[1]])
    # when the pairwise matrix is computed
    matrix = iou_matrix(rows, OTHERS)
    # then each row is that box's IoU with each of the others
    assert matrix.shape == (2, 3)
    np.testing.assert_array_equal(matrix[0], iou_one_to_many(SQUARE, OTHERS))
    assert matrix[1].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_iou_of_degenerate_boxes_is_zero() -> None:
    point = np.array([[5, 5, 5, 5]], np.float32)
    assert iou_matrix(point, point).tolist() == [[0.0]]


def test_iou_of_empty_sets_keeps_the_shape() -> None:
    assert iou_matrix(np.zeros((0, 4)), OTHERS).shape == (0, 3)
    assert iou_matrix(OTHERS, np.zeros((0, 4))).shape == (3, 0)


def test_nms_keeps_the_best_and_what_overlaps_it_little() -> None:
    # given A, B (IoU A-B 0.82), C (apart) and D (IoU D-A 0.5, D-B 0.43), D best
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    # when NMS runs at IoU 0.45
    keep = nms(boxes, scores, 0.45)
    # then D suppresses A, B survives D (0.43 <= 0.45), C stays; best first
    assert keep.tolist() == [3, 1, 2]


def test_nms_of_nothing_is_empty() -> None:
    keep = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.45)
    assert keep.dtype == np.int64 and keep.shape == (0,)


def test_batched_nms_never_suppresses_across_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    keep = batched_nms(boxes, scores, np.array([0, 0, 1]), 0.45)
    assert keep.tolist() == [0, 2]


def test_batched_nms_looks_at_the_best_candidates_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # given more disjoint boxes than NMS takes (3 here), scored in reverse order
    monkeypatch.setattr(qcloop.boxes, "MAX_NMS", 3)
    x = np.arange(5, dtype=np.float32)[:, None] * 20
    boxes = np.hstack([x, np.zeros_like(x), x + 10, np.full_like(x, 10)])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    # when class-wise NMS runs
    keep = batched_nms(boxes, scores, np.zeros(5, np.int64), 0.45)
    # then it keeps the best three, best first
    assert keep.tolist() == [4, 3, 2]


def test_box_geometry_needs_numpy_only() -> None:
    # the edge box installs the core and onnxruntime: no torch, no ultralytics
    tree = ast.parse(Path(qcloop.boxes.__file__).read_text())
    nodes = list(ast.walk(tree))
    modules = [n.module for n in nodes if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names]
    assert {str(name).split(".")[0] for name in modules} <= {"__future__", "numpy"}

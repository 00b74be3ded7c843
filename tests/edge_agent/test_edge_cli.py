"""``qcloop-edge infer``: one JSON line per image, in the image's own pixels; the import rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main
from tests.edge_agent.edge_helpers import make_constant_model

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ultralytics", "mlflow", "kfp", "dvc", "cv2", "components", "pipelines")


def test_infer_json_prints_one_line_per_image(
    yolo_onnx: Path, tag_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # given the exported model and real frames; conf 0 so that the untrained model finds boxes
    images = [str(p) for p in tag_images]
    # when inferred with --json
    rc = main(["infer", "--model", str(yolo_onnx), "--json", "--conf", "0", *images])
    # then one JSON object per image, exactly {"image", "detections": [{label, score, box}]}
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(images)
    for line, image in zip(lines, images, strict=True):
        record = json.loads(line)
        assert list(record) == ["image", "detections"] and record["image"] == image
        assert record["detections"], "conf 0 keeps boxes"
        for d in record["detections"]:
            assert list(d) == ["label", "score", "box"]
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 450 and 0 <= y1 <= y2 <= 300  # the frame's own pixels


def test_infer_several_at_once_keeps_the_order_and_the_boxes_of_one_at_a_time(
    yolo_onnx: Path, tag_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given real frames with an unreadable file among them
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    images = [str(p) for p in tag_images[:3]] + [str(bad)] + [str(p) for p in tag_images[3:]]
    args = ["infer", "--model", str(yolo_onnx), "--json", "--conf", "0.01"]
    # when inferred one at a time and four at once
    assert main([*args, "--threads", "1", *images]) == 1
    one = capsys.readouterr()
    assert main([*args, "--threads", "4", *images]) == 1
    four = capsys.readouterr()
    # then the same lines in the same order, the bad file named once, in its place
    assert four.out == one.out
    assert [json.loads(line)["image"] for line in four.out.splitlines()] == [
        i for i in images if i != str(bad)
    ]
    assert four.err.count("bad.jpg") == 1


def test_infer_exact_box_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # given a model that always sees one scratch at (180, 100, 270, 200) of a 450x300 frame
    output = np.array([[[160], [159.5], [64], [71], [0.875]]], np.float32)
    model = make_constant_model(tmp_path / "m.onnx", output, names="{0: 'scratch'}")
    frame = tmp_path / "frame.jpg"
    from PIL import Image

    Image.new("L", (450, 300)).save(frame)
    # when inferred
    assert main(["infer", "--model", str(model), "--json", str(frame)]) == 0
    # then the line is exact
    assert json.loads(capsys.readouterr().out) == {
        "image": str(frame),
        "detections": [{"label": "scratch", "score": 0.875, "box": [180.0, 100.0, 270.0, 200.0]}],
    }


def test_infer_on_a_dynamic_model_rect_by_default_square_if_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the same constant output from a model with free height and width
    output = np.array([[[160], [159.5], [64], [71], [0.875]]], np.float32)
    model = make_constant_model(tmp_path / "d.onnx", output, names="{0: 'scratch'}", dynamic=True)
    frame = tmp_path / "frame.jpg"
    from PIL import Image

    Image.new("L", (450, 300)).save(frame)
    # when inferred by default: on a 320x224 canvas (5 rows of padding above, not 53)
    assert main(["infer", "--model", str(model), "--json", str(frame)]) == 0
    rect = json.loads(capsys.readouterr().out)["detections"][0]["box"]
    # and with --square: on 320x320, as the static model
    assert main(["infer", "--model", str(model), "--json", "--square", str(frame)]) == 0
    square = json.loads(capsys.readouterr().out)["detections"][0]["box"]
    assert rect == [180.0, 167.61, 270.0, 267.61]
    assert square == [180.0, 100.0, 270.0, 200.0]


def test_infer_table_and_an_unreadable_image(
    yolo_onnx: Path, tag_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a real frame, a text file named like an image, and a missing file
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    missing = tmp_path / "missing.jpg"
    args = [str(broken), str(tag_images[0]), str(missing)]
    # when inferred without --json
    rc = main(["infer", "--model", str(yolo_onnx), *args])
    # then the readable one is reported, the others named on stderr, rc 1 at the end
    out, err = capsys.readouterr()
    assert rc == 1
    assert tag_images[0].name in out and "(no detections)" in out  # untrained: nothing at 0.25
    assert str(broken) in err and str(missing) in err


def test_infer_with_a_bad_model_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "m.onnx"
    bogus.write_text("no")
    assert main(["infer", "--model", str(bogus), str(bogus)]) == 1
    assert "not a loadable ONNX" in capsys.readouterr().err


def test_the_agent_imports_nothing_heavy() -> None:
    # the edge box has no torch/ultralytics/mlflow/kfp/dvc, nor the other rooms;
    # cv2 only where QCLOOP_EDGE_RESIZE=opencv asks for it (or a camera source loads it)
    code = (
        "import sys, edge_agent, edge_agent.cli, edge_agent.agent\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY}])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _detect_in_a_fresh_process(setup: str, model: Path, image: Path, printed: str) -> list[str]:
    """What a fresh Python prints (``printed``: an expression) after running ``setup``,
    then ``Detector.detect`` on ``image`` (its result: ``found``)."""
    code = (
        f"import os, sys\n{setup}\n"
        "from edge_agent import inference, resize\n"
        f"found = inference.Detector({str(model)!r}, confidence=0.01).detect({str(image)!r})\n"
        f"print({printed})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_without_opencv_the_agent_resizes_with_numpy(
    yolo_onnx: Path, tag_images: list[Path]
) -> None:
    # OpenCV (the camera extra) is optional: an edge-only box lacks it, even if asked for
    setup = "sys.modules['cv2'] = None; os.environ['QCLOOP_EDGE_RESIZE'] = 'opencv'"
    printed = "resize.RESIZE, type(found).__name__"
    assert _detect_in_a_fresh_process(setup, yolo_onnx, tag_images[0], printed) == [
        "numpy",
        "list",
    ]


@pytest.mark.parametrize("camera", [False, True])
def test_by_default_opencv_resizes_only_where_it_is_loaded_anyway(
    yolo_onnx: Path, tag_images: list[Path], camera: bool
) -> None:
    # given the default setting, a process with a camera source (which loads cv2) or not
    setup = (
        "os.environ.pop('QCLOOP_EDGE_RESIZE', None)\n"
        + ("from edge_agent.camera import CameraSource; CameraSource('0')\n" if camera else "")
        + "from edge_agent import resize\n"
        "calls = []\n"
        "numpy_resize = resize.resize_linear\n"
        "resize.resize_linear = lambda *a, **k: calls.append(1) or numpy_resize(*a, **k)"
    )
    printed = "resize.RESIZE, 'cv2' in sys.modules, len(calls), type(found).__name__"
    found = _detect_in_a_fresh_process(setup, yolo_onnx, tag_images[0], printed)
    # then OpenCV resizes where the camera loaded it, and is not imported for it elsewhere
    expected = ["auto", "True", "0", "list"] if camera else ["auto", "False", "1", "list"]
    assert found == expected


def test_python_dash_m_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "check-config" in out.stdout

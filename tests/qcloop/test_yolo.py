"""YOLO folder validation: each bad input is named with what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from qcloop.errors import DatasetError
from qcloop.synthetic import generate_yolo_dataset
from qcloop.yolo import capture_group, scan_yolo_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return generate_yolo_dataset(tmp_path / "yolo", shots=2, seed=1)


def test_capture_group_of_real_names() -> None:
    stem = "image-2020-04-22-11-04-44-46-cropped-left-bottom"
    assert capture_group(stem) == "image-2020-04-22-11-04-44-46"
    assert capture_group("plain") == "plain"


def test_valid_folder(folder: Path) -> None:
    names, items = scan_yolo_folder(folder)
    assert names == ["scratch"] and len(items) == 8


def test_real_metal_tags(metal_tags: Path) -> None:
    names, items = scan_yolo_folder(metal_tags)
    assert names == ["scratch"] and len(items) == 16
    assert sum(len(i.boxes) for i in items) == 35
    assert sum(1 for i in items if not i.boxes) == 3  # defect-free crops: empty label files


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        ("label_without_image", "label without image"),
        ("image_without_label", "image without label"),
        ("box_outside", "outside 0..1"),
        ("unknown_class", "unknown class id 3"),
        ("unreadable_jpeg", "unreadable image"),
        ("garbage_line", "expected 'class cx cy w h'"),
    ],
)
def test_bad_folder_is_named(folder: Path, breakage: str, fragment: str) -> None:
    images = sorted((folder / "images").iterdir())
    label = folder / "labels" / f"{images[0].stem}.txt"
    if breakage == "label_without_image":
        images[0].unlink()
    elif breakage == "image_without_label":
        label.unlink()
    elif breakage == "box_outside":
        label.write_text("0 1.4 0.5 0.1 0.1\n")
    elif breakage == "unknown_class":
        label.write_text("3 0.5 0.5 0.1 0.1\n")
    elif breakage == "unreadable_jpeg":
        images[0].write_bytes(b"not a jpeg at all")
    elif breakage == "garbage_line":
        label.write_text("zero 0.5\n")
    with pytest.raises(DatasetError, match=fragment) as err:
        scan_yolo_folder(folder)
    assert images[0].stem in str(err.value)


def test_missing_classes_file(folder: Path) -> None:
    (folder / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"classes.txt: missing; write the class names in it"):
        scan_yolo_folder(folder)


def test_not_a_yolo_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="images/ and labels/"):
        scan_yolo_folder(tmp_path)


def test_all_problems_reported_at_once(folder: Path) -> None:
    labels = sorted((folder / "labels").iterdir())
    for label in labels[:3]:
        label.write_text("0 2 2 0.1 0.1\n")
    with pytest.raises(DatasetError, match="3 problem"):
        scan_yolo_folder(folder)
    shutil.rmtree(folder / "labels")


def test_symlinks_are_refused_without_echoing_their_target(folder: Path, tmp_path: Path) -> None:
    # given a label linked to a file outside the folder, and an image linked likewise
    secret = tmp_path / "secret.txt"
    secret.write_text("root:TOPSECRET:0:0\n")
    label = sorted((folder / "labels").iterdir())[0]
    label.unlink()
    label.symlink_to(secret)
    image = sorted((folder / "images").iterdir())[1]
    image.rename(tmp_path / image.name)
    image.symlink_to(tmp_path / image.name)
    # when the folder is scanned
    with pytest.raises(DatasetError) as err:
        scan_yolo_folder(folder)
    # then each link is named as one, the target never read or shown
    message = str(err.value)
    assert "TOPSECRET" not in message and "2 problem(s)" in message
    assert f"{label}: a symbolic link" in message and f"{image}: a symbolic link" in message


def test_a_decompression_bomb_is_a_problem_of_its_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given Pillow's bomb limit far below the size of the folder's images
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    # when scanned: each image is reported, nothing crashes
    with pytest.raises(DatasetError, match="too many pixels to decode safely") as err:
        scan_yolo_folder(folder)
    assert "8 problem(s)" in str(err.value)

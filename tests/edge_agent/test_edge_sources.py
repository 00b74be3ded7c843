"""Frame sources: the hot folder (stable files, once each, policies) and the simulated camera."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from edge_agent.sources import FolderSource, SimulatedCameraSource, is_temporary, unique_target


def drain(source: FolderSource, timeout: float = 0.3) -> list[str]:
    """Names of all frames the source hands out within ``timeout`` per frame."""
    names = []
    while (frame := source.next_frame(timeout)) is not None:
        names.append(Path(frame.name).name)
        source.done(frame)
    return names


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


def test_each_complete_file_is_handed_out_once(inbox: Path, tag_images: list[Path]) -> None:
    # given a hot folder with two images and files a writer has not finished
    source = FolderSource(inbox, policy="keep", poll_interval_s=0.02)
    for image in tag_images[:2]:
        shutil.copy(image, inbox)
    (inbox / "c.jpg.part").write_bytes(b"half")
    (inbox / ".d.jpg").write_bytes(b"hidden")
    (inbox / "empty.jpg").write_bytes(b"")
    # when drained twice
    first = drain(source)
    second = drain(source)
    # then the two images came once, the others never; files are kept
    assert sorted(first) == sorted(p.name for p in tag_images[:2])
    assert second == []
    assert len(list(inbox.glob("*.jpg"))) == 4  # two images, .d.jpg, empty.jpg


def test_a_file_still_growing_waits(inbox: Path) -> None:
    # given a file that grows between two scans
    source = FolderSource(inbox, policy="keep", poll_interval_s=0.05)
    growing = inbox / "growing.bin"
    growing.write_bytes(b"x" * 10)
    assert source.next_frame(0.0) is None  # first scan: seen once, not yet stable
    with growing.open("ab") as fh:
        fh.write(b"y" * 10)
    # when the next scans see it unchanged
    frame = source.next_frame(1.0)
    # then it is handed out whole
    assert frame is not None and len(frame.data) == 20


def test_move_and_delete_policies(tmp_path: Path, tag_images: list[Path]) -> None:
    moved = FolderSource(tmp_path / "a", policy="move", poll_interval_s=0.02)
    deleted = FolderSource(tmp_path / "b", policy="delete", poll_interval_s=0.02)
    shutil.copy(tag_images[0], tmp_path / "a")
    shutil.copy(tag_images[0], tmp_path / "b")
    assert drain(moved) == drain(deleted) == [tag_images[0].name]
    assert [p.name for p in (tmp_path / "a" / "processed").iterdir()] == [tag_images[0].name]
    assert list((tmp_path / "b").glob("*.jpg")) == []


def test_the_same_name_again_after_a_move_is_new_work(inbox: Path, tag_images: list[Path]) -> None:
    source = FolderSource(inbox, policy="move", poll_interval_s=0.02)
    shutil.copy(tag_images[0], inbox)
    assert drain(source) == [tag_images[0].name]
    shutil.copy(tag_images[0], inbox)
    assert drain(source) == [tag_images[0].name]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == sorted(
        [tag_images[0].name, tag_images[0].stem + "-1.jpg"]
    )


def test_reject_moves_the_file_aside(inbox: Path) -> None:
    source = FolderSource(inbox, poll_interval_s=0.02)
    (inbox / "notes.txt").write_text("not an image")
    frame = source.next_frame(1.0)
    assert frame is not None
    source.reject(frame, "not an image")
    assert (inbox / "rejected" / "notes.txt").is_file()
    assert source.next_frame(0.1) is None


def test_temporary_names_and_unique_targets(tmp_path: Path) -> None:
    assert is_temporary(Path("a.jpg.tmp")) and is_temporary(Path(".a.jpg"))
    assert is_temporary(Path("a.jpg~")) and not is_temporary(Path("a.jpg"))
    (tmp_path / "a.jpg").write_bytes(b"1")
    assert unique_target(tmp_path, "a.jpg") == tmp_path / "a-1.jpg"
    assert unique_target(tmp_path, "b.jpg") == tmp_path / "b.jpg"


def test_simulated_camera_gives_jpeg_frames() -> None:
    source = SimulatedCameraSource(seed=3, interval_s=0.0)
    frames = [source.next_frame(1.0) for _ in range(2)]
    assert all(f is not None for f in frames)
    names = [f.name for f in frames if f]
    assert names == ["simulated-3-000001.jpg", "simulated-3-000002.jpg"]
    with Image.open(io.BytesIO(frames[0].data if frames[0] else b"")) as image:
        assert (image.format, image.size) == ("JPEG", (450, 300))


def test_simulated_camera_paces_frames() -> None:
    source = SimulatedCameraSource(interval_s=10.0)
    assert source.next_frame(0.1) is not None  # the first frame comes at once
    assert source.next_frame(0.05) is None  # the next one only after interval_s

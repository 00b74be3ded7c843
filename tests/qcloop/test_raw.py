"""``qcloop raw add``: unlabelled images into the raw store, duplicates skipped, bad files named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main
from qcloop.errors import DatasetError
from qcloop.raw import add_raw_images
from qcloop.settings import StoreSettings
from qcloop.storage import LocalStore, S3Store, list_raw_images, open_store
from tests.labelling.helpers import metal_tag_images, put_feedback_image

QUIET = {"progress": lambda _: None}


def _captures(folder: Path, n: int, skip: int = 0) -> Path:
    """A camera's folder: ``n`` metal-tag photos, one in a subfolder, and a stray text file."""
    (folder / "day-2").mkdir(parents=True)
    for k, image in enumerate(metal_tag_images(n, skip)):
        shutil.copy(image, folder / ("day-2" if k == 0 else "") / image.name)
    (folder / "notes.txt").write_text("shift B\n")
    return folder


def _add_and_check(store: LocalStore | S3Store, tmp_path: Path) -> None:
    # given a folder of three photos and a loose PNG named .jpg (its content decides)
    folder = _captures(tmp_path / "captures", 3)
    png = tmp_path / "odd.jpg"
    Image.open(metal_tag_images(1, skip=5)[0]).save(png, format="PNG")
    # when they are added
    report = add_raw_images(store, [folder, png], source="line-2 camera", **QUIET)
    # then each is in the store with a sidecar that sync-in reads like edge feedback
    assert (report.found, report.added, report.duplicates, report.ignored) == (4, 4, 0, 1)
    sidecars = {s.original_name: s for s in list_raw_images(store)}
    assert set(sidecars) == {p.name for p in metal_tag_images(3)} | {"odd.jpg"}
    photo = sidecars[metal_tag_images(1)[0].name]
    assert (photo.reason, photo.source, photo.model, photo.predictions) == (
        "manual",
        "line-2 camera",
        None,
        [],
    )
    assert (photo.width, photo.height, photo.content_type) == (450, 300, "image/jpeg")
    assert store.get_bytes(photo.key) == metal_tag_images(1)[0].read_bytes()
    odd = sidecars["odd.jpg"]
    assert (odd.key.endswith(".png"), odd.content_type) == (True, "image/png")
    # and adding them again, under another name too, adds nothing
    shutil.copy(png, tmp_path / "renamed.png")
    again = add_raw_images(store, [folder, tmp_path / "renamed.png", png], **QUIET)
    assert (again.added, again.duplicates) == (0, 5)


def test_add_to_a_local_store(tmp_path: Path) -> None:
    _add_and_check(LocalStore(tmp_path / "store"), tmp_path)


@pytest.mark.integration
def test_add_to_an_s3_endpoint(s3_store_settings: StoreSettings, tmp_path: Path) -> None:
    _add_and_check(S3Store(s3_store_settings), tmp_path)


def test_an_image_the_edge_sent_keeps_its_predictions(tmp_path: Path) -> None:
    # given an image the edge agent sent back with its predictions
    from qcloop.settings import Settings

    settings = Settings(store=StoreSettings(path=tmp_path / "store"))
    image = metal_tag_images(1)[0]
    sent = put_feedback_image(settings, image, [0.3])
    # when an operator adds the same photo by hand
    report = add_raw_images(open_store(settings.store), [image], **QUIET)
    # then it is a duplicate, and the edge's sidecar stays
    assert (report.added, report.duplicates) == (0, 1)
    (kept,) = list_raw_images(open_store(settings.store))
    assert kept == sent


def test_bad_files_are_named_and_nothing_is_added(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    folder = _captures(tmp_path / "captures", 2)
    (folder / "truncated.jpg").write_bytes(metal_tag_images(1)[0].read_bytes()[:200])
    Image.new("RGB", (8, 8)).save(folder / "pixel.gif", format="GIF")
    gif = folder / "pixel.gif"
    (folder / "link.jpg").symlink_to(metal_tag_images(1)[0])
    # when the folder and a GIF named as a file are added
    with pytest.raises(DatasetError) as err:
        add_raw_images(store, [folder, gif], **QUIET)
    # then every bad file is named with what to do, and nothing went in
    message = str(err.value)
    assert "3 of 5 files cannot go into the raw store, nothing was added" in message
    assert f"{folder / 'truncated.jpg'}: unreadable image" in message
    assert f"{gif}: a GIF image; convert it to JPEG or PNG" in message
    assert f"{folder / 'link.jpg'}: a symbolic link, not followed" in message
    assert list(store.list()) == []
    # and with skip_bad the good ones go in, the bad ones are reported
    report = add_raw_images(store, [folder, gif], skip_bad=True, **QUIET)
    assert (report.added, len(report.bad)) == (2, 3)
    assert len(list_raw_images(store)) == 2


def test_nothing_to_add_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        add_raw_images(LocalStore(tmp_path / "s"), [tmp_path / "missing"], **QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no \.jpg, \.jpeg or \.png image"):
        add_raw_images(LocalStore(tmp_path / "s"), [tmp_path / "empty"], **QUIET)


def test_cli_prints_one_json_line_and_progress_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "store"))
    folder = _captures(tmp_path / "captures", 2)
    assert main(["raw", "add", str(folder), "--source", "cam-7"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # the JSON alone on stdout
    assert (result["added"], result["duplicates"], result["source"]) == (2, 0, "cam-7")
    assert "[qcloop.raw] checking 2 images" in err
    # the list shows them; a bad file fails in one line naming it
    assert main(["raw"]) == 0
    assert capsys.readouterr().out.count("\tmanual\tcam-7\t") == 2
    (folder / "bad.png").write_bytes(b"not a png")
    assert main(["raw", "add", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "\nerror: 1 of 3 files" in err
    # Pillow's own words, or an image plugin another package registered failing to import
    assert re.search(r"bad\.png: (not an image Pillow can read|unreadable image)", err), err

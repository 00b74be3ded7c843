"""Small builders for the labelling tests: raw images with predictions, YOLO folders."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from qcloop.contracts import Detection, ModelRef, RawImageSidecar, ReleaseMessage, utcnow
from qcloop.settings import Settings
from qcloop.signing import load_private_key, seal
from qcloop.storage import open_store, put_raw_image, raw_key, released_key, sha256_bytes
from qcloop.yolo import image_size
from tests.conftest import METAL_TAGS

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def metal_tag_images(n: int, skip: int = 0) -> list[Path]:
    """``n`` real images of the metal-tags sample (sorted by name: 4 crops a capture, the
    first capture holds the 3 defect-free ones)."""
    images = sorted((METAL_TAGS / "images").glob("*.jpg"))
    if skip + n > len(images):
        raise ValueError(f"{n} images after {skip}: the sample has only {len(images)}")
    return images[skip : skip + n]


def put_feedback_image(
    settings: Settings, image: Path, scores: list[float], minute: int = 0
) -> RawImageSidecar:
    """Put ``image`` in the raw store like the edge agent does, one box per score."""
    data = image.read_bytes()
    width, height = image_size(image)
    digest = sha256_bytes(data)
    sidecar = RawImageSidecar(
        key=raw_key(digest, "jpg"),
        sha256=digest,
        width=width,
        height=height,
        source="camera-1",
        device_id="edge-1",
        captured_at=T0 + timedelta(minutes=minute),
        reason="low_confidence",
        original_name=image.name,
        model=ModelRef(name="qcloop-detector", version="3"),
        predictions=[
            Detection(label="scratch", score=s, box=(10.0 + 20 * n, 20.0, 60.0 + 20 * n, 80.5))
            for n, s in enumerate(scores)
        ],
    )
    put_raw_image(open_store(settings.store), data, sidecar)
    return sidecar


def release_model(
    settings: Settings,
    onnx: Path,
    key: Path,
    version: str,
    *,
    sequence: int = 1,
    input_size: int = 160,
) -> ReleaseMessage:
    """What the bridge keeps in the store: the ONNX of ``qcloop-detector`` ``version`` (one
    class) and the release's envelope, signed with ``key``."""
    store = open_store(settings.store)
    where = f"models/qcloop-detector/{version}/model.onnx"
    store.put_bytes(where, onnx.read_bytes())
    message = ReleaseMessage(
        fleet="line-1",
        model=ModelRef(name="qcloop-detector", version=version),
        sha256=sha256_bytes(onnx.read_bytes()),
        size=onnx.stat().st_size,
        url=store.url(where),
        input_size=input_size,
        class_names=["scratch"],
        released_by="test",
        sequence=sequence,
        expires_at=utcnow() + timedelta(days=30),
    )
    store.put_bytes(released_key("qcloop-detector"), seal(message, load_private_key(key)).payload())
    return message


def yolo_subset(dest: Path, n: int, skip: int = 0) -> Path:
    """A YOLO folder with ``n`` metal-tags images and their labels (copied, writable)."""
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    shutil.copy(METAL_TAGS / "classes.txt", dest / "classes.txt")
    for image in metal_tag_images(n, skip):
        shutil.copy(image, dest / "images" / image.name)
        shutil.copy(METAL_TAGS / "labels" / f"{image.stem}.txt", dest / "labels")
    return dest


def read_labels(path: Path) -> list[list[float]]:
    """YOLO lines of a label file as lists of numbers, sorted."""
    return sorted(
        [float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()
    )


def rect(x: float, y: float, w: float, h: float, label: str = "scratch") -> dict:
    """A Label Studio rectangle result on a 450x300 metal tag (percent)."""
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 450,
        "original_height": 300,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def annotate(
    url: str, token: str, task_id: int, result: list[dict], cancelled: bool = False
) -> int:
    """Submit an annotation (or a skip) as a labeller would; its id."""
    resp = requests.post(
        f"{url}/api/tasks/{task_id}/annotations/",
        json={"result": result, "was_cancelled": cancelled},
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    resp.raise_for_status()
    return int(resp.json()["id"])


def task_detail(url: str, token: str, task_id: int) -> dict:
    """A task as the API returns it (with predictions)."""
    resp = requests.get(
        f"{url}/api/tasks/{task_id}/", headers={"Authorization": f"Token {token}"}, timeout=30
    )
    resp.raise_for_status()
    return dict(resp.json())

"""A visual evaluation report: test images with true (green) and predicted (red) boxes.

One self-contained HTML file (images inline as PNG), shown as a KFP HTML
artifact in the Kubeflow UI and logged to the MLflow run as ``report.html``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from components.data import load_manifest
from components.evaluate import map_summary
from qcloop.contracts import EvalMetrics
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)

TRUE, PREDICTED = (40, 200, 80), (230, 50, 50)


def _true_boxes(label_file: Path, width: int, height: int) -> list[tuple[float, ...]]:
    boxes = []
    for line in label_file.read_text().splitlines():
        if line.strip():
            _, cx, cy, w, h = (float(v) for v in line.split())
            boxes.append(
                (
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                )
            )
    return boxes


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def render_report(
    onnx_path: Path,
    dataset_dir: Path,
    out_html: Path,
    *,
    imgsz: int,
    metrics: EvalMetrics | None = None,
    max_images: int = 6,
    conf: float = 0.25,
) -> Path:
    """Write the HTML report of ``onnx_path`` on up to ``max_images`` test images."""
    configure_offline()
    from ultralytics import YOLO

    root = Path(dataset_dir)
    manifest = load_manifest(root)
    chosen = [i for i in manifest.images if i.split == "test"][:max_images]
    cards = []
    with tempfile.TemporaryDirectory(prefix="qcloop-report-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, model_file)
        model = YOLO(str(model_file), task="detect")
        for item in chosen:
            image = Image.open(root / item.file).convert("RGB")
            draw = ImageDraw.Draw(image)
            for box in _true_boxes(root / item.label_file, image.width, image.height):
                draw.rectangle(box, outline=TRUE, width=2)
            result = model.predict(str(root / item.file), imgsz=imgsz, conf=conf, verbose=False)[0]
            for xyxy, score in zip(
                result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), strict=True
            ):
                draw.rectangle(xyxy, outline=PREDICTED, width=2)
                draw.text((xyxy[0] + 2, max(0, xyxy[1] - 11)), f"{score:.2f}", fill=PREDICTED)
            caption = (
                f"{html.escape(Path(item.file).name)}: {item.boxes} true, {len(result.boxes)} found"
            )
            cards.append(
                f'<figure><img src="data:image/png;base64,{_png(image)}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    headline = f"<p><b>{html.escape(map_summary(metrics))}</b></p>" if metrics else ""
    summary = html.escape(metrics.to_json()) if metrics else ""
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(
        "<!doctype html><meta charset='utf-8'><title>qcloop evaluation</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px}"
        "img{max-width:460px}</style>"
        f"<h1>{html.escape(Path(onnx_path).name)} on {manifest.version} (test split)</h1>"
        f"{headline}<p>green: true boxes, red: predicted (conf &ge; {conf})</p>"
        f"<pre>{summary}</pre>" + "".join(cards)
    )
    log.info("report with %d images -> %s", len(cards), out_html)
    return out_html

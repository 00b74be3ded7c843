"""Evaluate an exported ONNX detector on one split of a dataset version."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.bootstrap import ImageStats, grouped_interval, map50_95, stats_to_json
from components.data import copy_dataset, write_data_yaml
from components.export import onnx_metadata
from qcloop.contracts import SPLITS, DatasetManifest, EvalMetrics
from qcloop.errors import DatasetError, PipelineError
from qcloop.params import LETTERBOX, NMS_IOU
from qcloop.stats import percentile
from qcloop.yolo import capture_group
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)


def evaluate_onnx(
    onnx_path: Path,
    dataset_dir: Path,
    *,
    imgsz: int,
    split: str = "test",
    image_stats: Path | None = None,
) -> EvalMetrics:
    """mAP50, mAP50-95, precision and recall of ``onnx_path`` on ``split`` of ``dataset_dir``.

    Runs ultralytics' validator through onnxruntime on a copy of the dataset (it
    writes label caches). mAP50-95 comes with a capture-grouped bootstrap 95%
    interval (``components.bootstrap``); with a single capture the bounds are None.
    ``image_stats``: also write each image's statistics there (``stats_to_json``), for a
    paired comparison with another model on the same images (``components.champion``).
    ``DatasetError`` if the split is unknown or empty.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PipelineError(f"{onnx_path}: no such ONNX file; export the model first")
    exported = onnx_metadata(onnx_path).get("imgsz")
    if exported not in ([imgsz, imgsz], None):
        raise PipelineError(
            f"{onnx_path}: exported for imgsz {exported}, asked to evaluate at {imgsz}; "
            "evaluate at the export size or export again"
        )
    configure_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="qcloop-eval-") as tmp:
        work = Path(tmp)
        manifest = copy_dataset(Path(dataset_dir), work / "data")
        count = manifest.counts[split].images  # type: ignore[index]
        if count == 0:
            raise DatasetError(
                f"dataset {manifest.version} at {dataset_dir}: the {split} split is empty; "
                "nothing to evaluate (add images of other captures, or pick another split)"
            )
        data_yaml = write_data_yaml(work / "data", manifest, for_training=False)
        model_file = work / "model.onnx"  # ultralytics picks the backend by the suffix
        shutil.copyfile(onnx_path, model_file)
        log.info("%s on %s (%d images, imgsz %d)", onnx_path, split, count, imgsz)
        results, per_image = validate_per_image(
            YOLO(str(model_file), task="detect"), data_yaml, split=split, imgsz=imgsz, work=work
        )
        groups = capture_groups([f for f, _ in per_image], manifest, work / "data")
        test_images = [work / "data" / i.file for i in manifest.images if i.split == split]
        p50, p95 = cpu_latency_ms(model_file, test_images[:LATENCY_IMAGES], imgsz)
    box = results.box
    if image_stats is not None:
        files = [f for f, _ in per_image]
        Path(image_stats).write_text(stats_to_json(files, groups, [s for _, s in per_image]))
    interval = _interval_around(float(box.map), [s for _, s in per_image], groups)
    metrics = EvalMetrics(
        map50=_unit(box.map50),
        map50_95=_unit(box.map),
        map50_95_low=_unit(interval[0]) if interval else None,
        map50_95_high=_unit(interval[1]) if interval else None,
        captures=len(set(groups)),
        precision=_unit(box.mp),
        recall=_unit(box.mr),
        images=count,
        latency_p50_ms=round(p50, 2),
        latency_p95_ms=round(p95, 2),
    )
    log.info("%s on %s: %s", onnx_path.name, split, map_summary(metrics))
    log.info("%s", metrics.to_json())
    return metrics


def validate_per_image(
    model: Any, data_yaml: Path, *, split: str, imgsz: int, work: Path
) -> tuple[Any, list[tuple[str, ImageStats]]]:
    """Ultralytics' validation results and each image's statistics, with its file.

    NMS and letterbox are those a release carries to devices (``qcloop.params``);
    boxes are scored from ultralytics' own low confidence up (the precision-recall
    curve behind mAP), not from the devices' reporting threshold.

    The validator pools per-image entries in ``metrics.stats`` and clears them
    once it has computed the figures, so a batch-end callback copies each new
    entry; entry ``i`` is image ``i`` of the (unshuffled) validation dataset.
    """
    per_image: list[tuple[str, ImageStats]] = []

    def snapshot(validator: Any) -> None:
        stats, files = validator.metrics.stats, validator.dataloader.dataset.im_files
        for i in range(len(per_image), len(stats["tp"])):
            per_image.append((files[i], _image_stats(stats, i)))

    model.add_callback("on_val_batch_end", snapshot)
    results = model.val(
        data=str(data_yaml),
        split=split,
        imgsz=imgsz,
        iou=NMS_IOU,  # the NMS a release tells devices to run (qcloop.params)
        rect=LETTERBOX == "rect",  # dynamic exports: the letterbox devices run them with
        batch=1,
        device="cpu",
        workers=0,
        plots=False,
        project=str(work),
        name="val",
    )
    return results, per_image


def capture_groups(files: list[str], manifest: DatasetManifest, root: Path) -> list[str]:
    """The manifest's capture group of each image file under ``root`` (the copy validated);
    a file the manifest does not list falls back to the group of its name."""
    base = Path(root).resolve()
    group_of = {str(base / i.file): i.group for i in manifest.images}
    return [group_of.get(str(Path(f).resolve()), capture_group(Path(f).stem)) for f in files]


def _image_stats(stats: dict[str, list[Any]], index: int) -> ImageStats:
    return ImageStats(
        tp=np.asarray(stats["tp"][index], dtype=bool),
        conf=np.asarray(stats["conf"][index]),
        pred_cls=np.asarray(stats["pred_cls"][index]),
        target_cls=np.asarray(stats["target_cls"][index]),
    )


def _interval_around(
    reported: float, images: list[ImageStats], groups: list[str]
) -> tuple[float, float] | None:
    """The capture-grouped interval, or None if the per-image statistics do not give back
    the validator's figure (an ultralytics change): an interval around another figure
    would mislead."""
    recomputed = map50_95(images)
    if abs(recomputed - reported) > 1e-9:
        log.warning(
            "per-image statistics give mAP50-95 %.6f, the validator %.6f: no interval",
            recomputed,
            reported,
        )
        return None
    return grouped_interval(images, groups)


def map_summary(metrics: EvalMetrics) -> str:
    """``mAP50-95 0.56 (95% interval 0.49-0.62 over 7 captures)``, as people read it."""
    figure = f"mAP50-95 {metrics.map50_95:.2f}"
    if metrics.map50_95_low is not None and metrics.map50_95_high is not None:
        bounds = f"{metrics.map50_95_low:.2f}-{metrics.map50_95_high:.2f}"
        return f"{figure} (95% interval {bounds} over {metrics.captures} captures)"
    if metrics.captures is not None:
        plural = "capture" if metrics.captures == 1 else "captures"
        return f"{figure} ({metrics.captures} {plural}: no interval)"
    return figure


LATENCY_IMAGES = 20


def cpu_latency_ms(
    onnx_path: Path, images: list[Path], imgsz: int, warmup: int = 3
) -> tuple[float, float]:
    """p50 and p95 of onnxruntime ``session.run`` on the CPU, batch 1, over real images.

    Only the network is timed (decoding and resizing are not), so the figure
    compares models, not pre-processing code. A model with free height/width runs
    at each image's rect canvas (``latency_canvas``), as the edge agent runs it.
    """
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    dynamic = not all(isinstance(d, int) for d in first.shape[2:])
    stride = int(onnx_metadata(Path(onnx_path)).get("stride") or 32)  # type: ignore[call-overload]
    tensors = []
    for path in images:
        with Image.open(path) as img:
            size = latency_canvas(img.size, imgsz, stride) if dynamic else (imgsz, imgsz)
            pixels = np.asarray(img.convert("RGB").resize(size), dtype=np.float32)
        tensors.append(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None] / 255.0))
    name = first.name
    for tensor in tensors[:warmup]:
        session.run(None, {name: tensor})
    times = []
    for tensor in tensors:
        started = time.perf_counter()
        session.run(None, {name: tensor})
        times.append((time.perf_counter() - started) * 1000.0)
    return percentile(times, 50), percentile(times, 95)


def latency_canvas(image_size: tuple[int, int], imgsz: int, stride: int) -> tuple[int, int]:
    """(width, height) a dynamic-input model runs a ``image_size`` frame at (rect letterbox).

    The longer side scales to ``imgsz``, the shorter one is padded up to a multiple
    of ``stride``, as ultralytics' ``LetterBox(auto=True)`` and the edge agent do.
    """
    from qcloop.yolo import letterbox_shape

    return letterbox_shape(image_size, (imgsz, imgsz), stride)[1]


def _unit(value: float) -> float:
    """A metric as a plain float clipped to 0..1 (guards float noise like 1.0000001)."""
    return min(1.0, max(0.0, float(value)))


def evaluate_yolo_folder(onnx_path: Path, folder: Path, *, imgsz: int | None = None) -> EvalMetrics:
    """Metrics of any ONNX detector on every image of a plain YOLO folder (``qcloop eval``).

    The folder is validated like an import (``qcloop.yolo``); its images form the
    test split of a throw-away dataset. ``imgsz`` defaults to the export size.
    """
    from qcloop.contracts import ManifestImage, count_splits
    from qcloop.storage import sha256_file
    from qcloop.yolo import scan_yolo_folder

    names, items = scan_yolo_folder(Path(folder))
    exported = onnx_metadata(Path(onnx_path)).get("imgsz") if Path(onnx_path).is_file() else None
    size = imgsz or (int(exported[0]) if exported else 640)
    with tempfile.TemporaryDirectory(prefix="qcloop-evalset-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "labels").mkdir()
        images = []
        for item in items:
            file = f"images/{item.image.name}"
            shutil.copyfile(item.image, root / file)
            shutil.copyfile(item.label, root / "labels" / f"{item.stem}.txt")
            images.append(
                ManifestImage(
                    file=file,
                    label_file=f"labels/{item.stem}.txt",
                    split="test",
                    group=capture_group(item.stem),
                    sha256=sha256_file(item.image),
                    width=item.width,
                    height=item.height,
                    boxes=len(item.boxes),
                )
            )
        DatasetManifest(
            version="v0",
            class_names=names,
            source=str(folder),
            images=images,
            counts=count_splits(images),
        ).save(root / "manifest.json")
        return evaluate_onnx(Path(onnx_path), root, imgsz=size, split="test")

"""Real scratch marks pasted into the train photos, anew each time a photo is loaded.

A scratch on the metal tags is a bright, thin mark on a darker plate: what a photo
keeps after its blur (its shading) is taken away, above its own fine texture, is the
mark and little else (``bright_marks``). The marks inside the train labels form a bank
(``marks_in``); ``paste_marks`` adds some of them, mirrored at random, to a photo, each
at a place of the plate as bright as the mark's own background, flat (no edge, hole or
border) and free of labels, with the source label's box there.

``PastingDataset`` does this inside ultralytics' training loader (the ``paste`` recipe
of ``benchmarks.training``): every labelled train photo gets ``paste`` fresh marks
each time it is loaded, the mosaic's other photos too, so the model sees another set of
pasted scratches every epoch. Defect-free photos stay defect-free, the val split is
never touched, and the dataset keeps its size, so an epoch costs what it did.
``benchmarks.paste_scratches`` writes the same paste once into a copy of a dataset
version (the ``+paste`` variants of ``benchmarks.bench_recipes``).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
from ultralytics.data.dataset import YOLODataset

log = logging.getLogger(__name__)

# px (Gaussian sigma): what the blur removes is shading; what is left, the marks. The
# PIL blur of benchmarks/bench_label_agreement.py (BLUR) uses the same sigma.
BLUR = 8
NOISE_SIGMAS = 2.0  # a mark's pixel: brighter than this many sigmas of the photo's texture
MAX_SHADE_STEP = 25.0  # grey levels between the mark's background and its new place
MAX_PLACE_RANGE = 30.0  # grey levels of shading across a place: more is an edge, hole, border
TRIES = 200  # places tried for one mark before it is left out


class Mark(NamedTuple):
    """A scratch as it was labelled: its bright pixels (its box's size), the mean grey
    level of the plate around it, and its label's class."""

    pixels: Any
    shade: float
    class_id: int


def gray_and_shading(image: Any) -> tuple[Any, Any]:
    """A uint8 photo as ultralytics loads it (H x W x 3 BGR, or H x W x 1) as grayscale
    pixels and their blur (its shading: the photo without its marks), both float32."""
    import cv2

    gray = image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    gray = gray.astype(np.float32)
    return gray, cv2.GaussianBlur(gray, (0, 0), BLUR)


def bright_marks(gray: Any, shading: Any) -> Any:
    """The pixels brighter than the photo's own texture, by how much (0 elsewhere)."""
    detail = gray - shading
    texture = 1.4826 * float(np.median(np.abs(detail - np.median(detail))))
    return np.clip(detail - NOISE_SIGMAS * texture, 0, None)


def marks_in(gray: Any, shading: Any, boxes: Any, class_ids: Any) -> list[Mark]:
    """The marks inside the labels of one photo: ``boxes`` integer xyxy pixels (n x 4),
    ``class_ids`` their classes; a label with no bright pixel in it gives none."""
    bright = bright_marks(gray, shading)
    bank = []
    for (x1, y1, x2, y2), class_id in zip(boxes, class_ids, strict=True):
        pixels = bright[y1:y2, x1:x2]
        if pixels.size and pixels.max() > 0:
            shade = float(shading[y1:y2, x1:x2].mean())
            bank.append(Mark(pixels.copy(), shade, int(class_id)))
    return bank


def _overlaps(box: tuple[int, int, int, int], boxes: list[Any]) -> bool:
    x1, y1, x2, y2 = box
    return any(not (x2 <= b[0] or x1 >= b[2] or y2 <= b[1] or y1 >= b[3]) for b in boxes)


def paste_marks(
    gray: Any, shading: Any, boxes: list[Any], bank: list[Mark], count: int, rng: Any
) -> tuple[Any, list[tuple[int, tuple[int, int, int, int]]]]:
    """``gray`` with up to ``count`` marks of ``bank`` added, and their (class, box xyxy
    px).

    A mark goes, mirrored at random, to a place of its size where the shading is as
    bright as its own background (within ``MAX_SHADE_STEP``), flat (no edge, hole or
    border: ``MAX_PLACE_RANGE``) and free of every box in ``boxes`` and of the marks
    pasted before; a mark with no such place in ``TRIES`` tries is left out."""
    out = gray.copy()
    height, width = gray.shape
    taken = [np.asarray(b) for b in boxes]
    pasted: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(count):
        mark = bank[int(rng.integers(len(bank)))]
        pixels = mark.pixels
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if rng.random() < 0.5:
            pixels = pixels[::-1]
        h, w = pixels.shape
        if h >= height or w >= width:
            continue
        for _try in range(TRIES):
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            place = shading[y : y + h, x : x + w]
            box = (x, y, x + w, y + h)
            if abs(float(place.mean()) - mark.shade) > MAX_SHADE_STEP:
                continue
            if float(np.ptp(place)) > MAX_PLACE_RANGE or _overlaps(box, taken):
                continue
            out[y : y + h, x : x + w] += pixels
            taken.append(np.asarray(box))
            pasted.append((mark.class_id, box))
            break
    return np.clip(out, 0, 255), pasted


def box_pixels(xywhn: Any, width: int, height: int) -> Any:
    """Normalised xywh boxes (n x 4) as integer xyxy pixels inside a width x height photo."""
    from ultralytics.utils.ops import xywhn2xyxy

    boxes = np.rint(xywhn2xyxy(np.asarray(xywhn, dtype=float).reshape(-1, 4), w=width, h=height))
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes.astype(int)


def paste_into(
    image: Any, xywhn: Any, bank: list[Mark], count: int, rng: Any
) -> tuple[Any, Any, Any]:
    """A BGR uint8 photo with up to ``count`` marks of ``bank`` pasted (``paste_marks``;
    the same brightening on each channel: the tags are photographed in grey) beside its
    labels ``xywhn`` (normalised xywh, n x 4). Returns the new photo (``image`` itself is
    not written: ultralytics may cache it), and the pasted marks' classes (k) and
    normalised xywh boxes (k x 4)."""
    from ultralytics.utils.ops import xyxy2xywhn

    height, width = image.shape[:2]
    gray, shading = gray_and_shading(image)
    out, pasted = paste_marks(
        gray, shading, list(box_pixels(xywhn, width, height)), bank, count, rng
    )
    if not pasted:
        return image, np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
    photo = image.copy()
    for _, (x1, y1, x2, y2) in pasted:  # only the marks' places change
        delta = out[y1:y2, x1:x2] - gray[y1:y2, x1:x2]
        place = image[y1:y2, x1:x2].astype(np.float32)
        photo[y1:y2, x1:x2] = np.clip(place + delta[..., None], 0, 255)
    classes = np.array([class_id for class_id, _ in pasted], np.float32)
    boxes = xyxy2xywhn(np.array([box for _, box in pasted], float), w=width, h=height)
    return photo, classes, boxes.astype(np.float32)


class PastingDataset(YOLODataset):
    """ultralytics' YOLO training dataset whose labelled photos each get ``paste_count``
    marks of ``paste_bank`` (``paste_into``) every time they are loaded; photos without a
    label, or with polygon labels, are left as they are. Made by ``use_paste`` from the
    dataset ultralytics built, so every other behaviour is ultralytics' own."""

    paste_bank: list[Mark]
    paste_count: int

    def update_labels_info(self, label: dict[str, Any]) -> dict[str, Any]:
        if self.paste_bank and len(label["bboxes"]) and not len(label.get("segments", [])):
            # seeded from numpy's global state, which ultralytics seeds per loader worker
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
            photo, classes, boxes = paste_into(
                label["img"], label["bboxes"], self.paste_bank, self.paste_count, rng
            )
            if len(classes):
                label["img"] = photo
                label["cls"] = np.concatenate([label["cls"], classes.reshape(-1, 1)])
                label["bboxes"] = np.concatenate([label["bboxes"], boxes])
        return super().update_labels_info(label)


def dataset_bank(dataset: YOLODataset) -> list[Mark]:
    """The marks inside every label of an ultralytics dataset, at the size its photos are
    loaded (``load_image``: resized to the training image size). The dataset's image
    buffer is left as it was (``load_image`` fills it while training augments)."""
    kept = (list(dataset.ims), list(dataset.im_hw0), list(dataset.im_hw), list(dataset.buffer))
    bank: list[Mark] = []
    for index, label in enumerate(dataset.labels):
        if not len(label["bboxes"]):
            continue
        image = dataset.load_image(index)[0]
        gray, shading = gray_and_shading(image)
        height, width = gray.shape
        boxes = box_pixels(label["bboxes"], width, height)
        bank.extend(marks_in(gray, shading, boxes, label["cls"].reshape(-1)))
    dataset.ims, dataset.im_hw0, dataset.im_hw, dataset.buffer = kept
    return bank


def use_paste(trainer: Any, count: int) -> None:
    """Training callback (``on_pretrain_routine_start``): the train split's dataset becomes
    a ``PastingDataset`` pasting ``count`` marks into each labelled photo, its bank taken
    from the train labels. Val is built as ultralytics builds it. A train split without a
    labelled mark trains unchanged, and says so."""
    build = trainer.build_dataset

    def build_dataset(img_path: str, mode: str = "train", batch: int | None = None) -> Any:
        dataset = build(img_path, mode, batch)
        if mode != "train" or type(dataset) is not YOLODataset:
            return dataset
        bank = dataset_bank(dataset)
        if bank:
            log.info(
                "paste: %d scratch marks from the train labels, %d pasted into each labelled "
                "train photo as it is loaded",
                len(bank),
                count,
            )
        else:
            log.info("paste: no scratch mark in the train labels; training without paste")
        dataset.__class__ = PastingDataset
        dataset.paste_bank = bank
        dataset.paste_count = count
        return dataset

    trainer.build_dataset = build_dataset

"""A decoded frame's pixels read in place from Pillow (edge_agent.pixels)."""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.pixels import frame_pixels
from edge_agent.resize import resize_linear


@pytest.fixture
def blocks_kept() -> Iterator[None]:
    """Pillow keeps freed image blocks for the next image (as the agent has it)."""
    before = Image.core.get_blocks_max()
    Image.core.set_blocks_max(8)
    yield
    Image.core.set_blocks_max(before)


def photo(metal_tags: Path, width: int = 1920) -> Image.Image:
    image = Image.open(next((metal_tags / "images").glob("*.jpg"))).convert("RGB")
    scaled = image.resize((width, round(image.height * width / image.width)))
    out = io.BytesIO()
    scaled.save(out, "JPEG", quality=90)
    decoded = Image.open(io.BytesIO(out.getvalue()))
    decoded.load()
    return decoded


def test_an_rgb_frame_is_read_in_place_and_its_view_outlives_the_image(
    metal_tags: Path, blocks_kept: None
) -> None:
    # given a decoded 1920x1280 camera frame
    image = photo(metal_tags)
    expected = np.asarray(image).copy()
    # when its pixels are taken
    pixels = frame_pixels(image)
    # then they are Pillow's own RGBX memory (no copy), read only, R, G, B first
    assert pixels.shape == (1280, 1920, 4) and not pixels.flags.writeable
    assert np.array_equal(pixels[..., :3], expected)
    # and the memory stays the view's when the image is gone, though Pillow would hand
    # a freed block of that size to the next images
    del image
    gc.collect()
    others = [photo(metal_tags) for _ in range(3)]
    for other in others:
        other.paste((0, 0, 0), (0, 0, 1920, 1280))
    assert np.array_equal(pixels[..., :3], expected)


def test_a_frame_in_several_blocks_and_other_modes_are_copied_as_rgb(metal_tags: Path) -> None:
    before = Image.core.get_block_size()
    Image.core.set_block_size(64 * 1024)  # a frame larger than a block: rows apart
    try:
        image = photo(metal_tags, width=640)
    finally:
        Image.core.set_block_size(before)
    pixels = frame_pixels(image)
    assert pixels.shape == (image.height, image.width, 3)
    assert np.array_equal(pixels, np.asarray(image))
    for mode in ("L", "RGBA", "P"):
        other = image.convert(mode)
        assert np.array_equal(frame_pixels(other)[..., :3], np.asarray(other.convert("RGB")))


def test_resized_from_pillow_s_memory_is_opencv_s_pixels(metal_tags: Path) -> None:
    import cv2

    image = photo(metal_tags)
    rgb = np.asarray(image)
    for size in [(480, 320), (17, 11), (2500, 1667)]:
        expected = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_linear(frame_pixels(image), size), expected), size

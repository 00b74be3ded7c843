"""A decoded frame's pixels as a numpy array, read in place where Pillow allows it.

``np.asarray(image)`` copies an RGB frame out of Pillow (which keeps it as 4 bytes a
pixel, RGBX) into a new block: for a 1920x1280 frame 7 MB, mapped and faulted in page by
page for every frame, ~8 ms of the frame on a 2-core box (``benchmarks.bench_edge_profile``).
Pillow (11.2+) also exports an image through the Arrow C data interface, without a copy,
when the image is held in one block (up to Pillow's block size, 16 MB: ~4 million pixels).
``frame_pixels`` reads that export as an HxWx4 view, whose first three channels are the
RGB pixels; the view keeps Pillow's memory alive as long as it lives. Any other layout,
an older Pillow or an image in several blocks gets the copy.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from PIL import Image


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    ("dictionary", ctypes.POINTER(_ArrowSchema)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.POINTER(_ArrowArray)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _rgbx_view(image: Image.Image) -> np.ndarray | None:
    """Pillow's own RGBX pixels of an RGB ``image`` as an HxWx4 view, or None."""
    try:
        schema_capsule, array_capsule = image.__arrow_c_array__()
    except (AttributeError, ValueError, OSError):  # older Pillow, several blocks
        return None
    schema = _ArrowSchema.from_address(_capsule_pointer(schema_capsule, b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(array_capsule, b"arrow_array"))
    width, height = image.size
    if schema.format != b"+w:4" or schema.n_children != 1 or array.n_children != 1:
        return None  # not one fixed-size list of 4 values a pixel
    if schema.children[0].contents.format != b"C" or array.offset != 0:
        return None  # not uint8 values
    values = array.children[0].contents
    size = width * height * 4
    if values.offset != 0 or values.length != size or values.n_buffers != 2:
        return None
    address = values.buffers[1]
    if not address:
        return None
    memory: Any = (ctypes.c_uint8 * size).from_address(address)
    memory.export = array_capsule  # Pillow's memory is kept until the view is gone
    return np.frombuffer(memory, np.uint8).reshape(height, width, 4)


def frame_pixels(image: Image.Image) -> np.ndarray:
    """``image``'s RGB pixels as an HxWxC uint8 array (C 3 or 4: the first three are R, G,
    B), read in place where Pillow allows it; read only."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    view = _rgbx_view(rgb)
    if view is not None:
        view.flags.writeable = False
        return view
    return np.asarray(rgb)

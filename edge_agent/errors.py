"""Errors the edge agent adds under the core tree (``qcloop.errors``).

    QcloopError (core)
    ├── ConfigError, ContractError, StoreError, IntegrityError, ... (core)
    ├── ModelError     an ONNX file cannot be loaded, or does not match its release
    └── ImageError     a frame or file is not a readable image

Loading an edge config raises the core ``ConfigError``; a refused download the
core ``IntegrityError``.
"""

from __future__ import annotations

from qcloop.errors import QcloopError


class ModelError(QcloopError):
    """An ONNX model cannot be loaded or does not match what its release says."""


class ImageError(QcloopError):
    """A frame or an image file cannot be decoded."""

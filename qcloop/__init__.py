"""qcloop core: the ground floor every other part of the project imports.

It holds the contracts (the three interfaces and the release message), the
settings, the object store, dataset versions (YOLO layout + DVC), the synthetic
data generator, MQTT topic names, box geometry (IoU, NMS) and percentiles. It
imports no other folder of the project. ``__version__`` is the project's one
version: the package metadata reads it (pyproject.toml).
"""

from qcloop.errors import QcloopError

__all__ = ["QCLOOP_IMAGE", "QcloopError", "__version__"]
__version__ = "0.1.0"
# Repository of the platform image (docker/platform.Dockerfile) every KFP component of
# every room runs in; a compiled pipeline names it with the tag of its code version
# (pipelines/ir.py), and the setting pipelines.image replaces it.
QCLOOP_IMAGE = "ghcr.io/qcloop/qcloop"

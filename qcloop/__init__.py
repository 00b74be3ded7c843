"""qcloop core: the ground floor every other part of the project imports.

It holds the contracts (the three interfaces and the release message), the
settings, the object store, dataset versions (YOLO layout + DVC), the synthetic
data generator and MQTT topic names. It imports no other folder of the project.
"""

from qcloop.errors import QcloopError

__all__ = ["QCLOOP_IMAGE", "QcloopError", "__version__"]
__version__ = "0.1.0"
# Repository of the platform image (docker/platform.Dockerfile) every KFP component of
# every room runs in; a compiled pipeline names it with the tag of its code version
# (pipelines/ir.py), and the setting pipelines.image replaces it.
QCLOOP_IMAGE = "ghcr.io/qcloop/qcloop"

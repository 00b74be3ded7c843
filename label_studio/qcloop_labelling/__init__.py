"""qcloop's labelling room: the sync between the raw store and Label Studio.

Tasks go in with the edge agent's predictions as pre-annotations (``sync_in``),
verified labels come out as a YOLO folder (``sync_out``) and become the next
dataset version (``run_round``). Existing labels can be imported as annotated
tasks (``import_labels``). Lives under ``label_studio/`` but is named
``qcloop_labelling`` so that it never shadows Label Studio's own package.
"""

from qcloop_labelling.client import LabelStudioClient, connect
from qcloop_labelling.errors import (
    AnnotationError,
    LabellingError,
    LabelStudioApiError,
    LabelStudioAuthError,
    LabelStudioUnavailable,
)
from qcloop_labelling.import_labels import import_coco, import_label_studio_json, import_yolo
from qcloop_labelling.project import ensure_project, find_project, label_config
from qcloop_labelling.round import run_round
from qcloop_labelling.settings import LabelStudioSettings, load_all
from qcloop_labelling.sync_in import sync_in
from qcloop_labelling.sync_out import ANNOTATION_RULE, sync_out

__all__ = [
    "ANNOTATION_RULE",
    "AnnotationError",
    "LabelStudioApiError",
    "LabelStudioAuthError",
    "LabelStudioClient",
    "LabelStudioSettings",
    "LabelStudioUnavailable",
    "LabellingError",
    "connect",
    "ensure_project",
    "find_project",
    "import_coco",
    "import_label_studio_json",
    "import_yolo",
    "label_config",
    "load_all",
    "run_round",
    "sync_in",
    "sync_out",
]

"""The Label Studio project: created once, kept in line with the settings, idempotently."""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.errors import LabellingError

CONFIG_TEMPLATE = Path(__file__).resolve().parents[1] / "labeling_config.xml"
INSTRUCTIONS = """<h3>How to label defects</h3>
<ul>
<li>Draw one tight box around every defect; pick its class ({classes}).</li>
<li>What is <b>one</b> defect: a scratch along one line is one, even where it fades
and starts again (one box from its first mark to its last); scratches in other
directions, crossing or touching it, are one each (a box each). Box the same
marks the same way on every photo: the model learns the boxes as drawn.</li>
<li>Boxes from the model (pre-annotations, with their score) are suggestions:
move, resize or delete them; add what the model missed.</li>
<li>No defect on the part? Submit with no box: that is a <b>negative</b>, and it counts.</li>
<li>Cannot judge the image (blurred, no part, wrong camera)? <b>Skip</b> it.</li>
<li>Keep boxes inside the image and unrotated.</li>
</ul>"""


# The data manager's default tab (Label Studio names the first tab "Default" and creates it
# when a project has none): the columns a labeller needs, qcloop's bookkeeping hidden.
DEFAULT_VIEW = "Default"
# Every column Label Studio 1.23 offers for qcloop's tasks (``image_task``'s data keys as
# ``data.<key>``); a column missing here would show, so the tests compare with the server.
TASK_COLUMNS = (
    "id",
    "inner_id",
    "completed_at",
    "total_annotations",
    "cancelled_annotations",
    "total_predictions",
    "annotators",
    "annotations_results",
    "annotations_ids",
    "predictions_score",
    "predictions_model_versions",
    "predictions_results",
    "file_upload",
    "storage_filename",
    "created_at",
    "updated_at",
    "updated_by",
    "avg_lead_time",
    "draft_exists",
    "data.image",
    "data.name",
    "data.source",
    "data.reason",
    "data.captured_at",
    "data.confidence",
    "data.raw_key",
    "data.sha256",
    "data.width",
    "data.height",
)
# "explore" is the task table, "labeling" the narrow task list beside the editor
SHOWN_COLUMNS = {
    "explore": (
        "id",
        "data.image",
        "data.name",
        "data.source",
        "data.reason",
        "completed_at",
        "total_annotations",
        "cancelled_annotations",
        "total_predictions",
        "annotators",
        "predictions_score",
        "predictions_model_versions",
    ),
    "labeling": ("total_annotations", "data.image"),  # Label Studio's own choice there
}


@dataclass(frozen=True)
class ProjectState:
    """The project and what the bootstrap did to it."""

    id: int
    title: str
    action: str  # "created", "updated" or "unchanged"


def label_config(class_names: list[str], template: Path = CONFIG_TEMPLATE) -> str:
    """The labelling config of ``template`` with one ``Label`` per class name."""
    root = ET.fromstring(template.read_text())
    control = root.find(".//RectangleLabels")
    if control is None:
        raise LabellingError(f"{template}: no <RectangleLabels> control")
    first = control.find("Label")
    colours = [first.get("background")] if first is not None else []
    for old in list(control):
        control.remove(old)
    for n, name in enumerate(class_names):
        colour = colours[0] if n < len(colours) and colours[0] else _colour(n)
        ET.SubElement(control, "Label", value=name, background=colour)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode")


def _colour(n: int) -> str:
    r, g, b = colorsys.hsv_to_rgb((n * 0.618034) % 1.0, 0.75, 0.9)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def desired_fields(title: str, class_names: list[str]) -> dict[str, object]:
    """Project fields the bootstrap owns."""
    return {
        "title": title,
        "label_config": label_config(class_names),
        "expert_instruction": INSTRUCTIONS.format(classes=", ".join(class_names)),
        "show_instruction": True,
        "show_skip_button": True,
        "enable_empty_annotation": True,
        "maximum_annotations": 1,
        "sampling": "Sequential sampling",
    }


def ensure_project(client: LabelStudioClient, title: str, class_names: list[str]) -> ProjectState:
    """Create the project, or bring the fields it owns and its default data manager tab in
    line; running twice changes nothing."""
    wanted = desired_fields(title, class_names)
    found = client.projects_titled(title)
    if len(found) > 1:
        ids = ", ".join(str(p["id"]) for p in found)
        raise LabellingError(
            f"Label Studio at {client.url} has {len(found)} projects titled '{title}' "
            f"(ids {ids}); rename or delete all but one"
        )
    if not found:
        project_id = int(client.create_project(wanted)["id"])
        ensure_default_view(client, project_id)
        return ProjectState(project_id, title, "created")
    project_id = int(found[0]["id"])
    changed = {k: v for k, v in wanted.items() if found[0].get(k) != v}
    if changed:
        client.update_project(project_id, changed)
    view = ensure_default_view(client, project_id)
    action = "updated" if changed or view != "unchanged" else "unchanged"
    return ProjectState(project_id, title, action)


def hidden_columns() -> dict[str, list[str]]:
    """``hiddenColumns`` of the default tab: every known column not in ``SHOWN_COLUMNS``."""
    return {
        mode: [f"tasks:{c}" for c in TASK_COLUMNS if c not in shown]
        for mode, shown in SHOWN_COLUMNS.items()
    }


def ensure_default_view(client: LabelStudioClient, project_id: int) -> str:
    """The data manager's default tab with qcloop's columns: ``created``, ``updated`` (its
    hidden columns put back, its filters and order kept) or ``unchanged``."""
    hidden = hidden_columns()
    views = client.views(project_id)
    mine = [v for v in views if (v.get("data") or {}).get("title") == DEFAULT_VIEW]
    if not mine:
        data = {"title": DEFAULT_VIEW, "type": "list", "target": "tasks", "hiddenColumns": hidden}
        client.save_view(project_id, data)
        return "created"
    view = mine[0]
    current = view["data"].get("hiddenColumns") or {}
    if all(set(current.get(mode) or ()) == set(cols) for mode, cols in hidden.items()):
        return "unchanged"
    # filters, ordering and selection travel beside ``data`` in Label Studio's model:
    # leaving them out of the update keeps them
    beside = ("filters", "ordering", "selectedItems")
    kept = {k: v for k, v in view["data"].items() if k not in beside}
    client.save_view(project_id, kept | {"hiddenColumns": hidden}, int(view["id"]))
    return "updated"


def find_project(client: LabelStudioClient, title: str) -> int:
    """Id of the project titled ``title``; a clear error if it was never bootstrapped."""
    found = client.projects_titled(title)
    if len(found) != 1:
        raise LabellingError(
            f"Label Studio at {client.url} has {len(found)} projects titled '{title}'; "
            "run `qcloop labelling bootstrap` first (exactly one is expected)"
        )
    return int(found[0]["id"])

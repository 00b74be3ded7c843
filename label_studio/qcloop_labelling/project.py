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


@dataclass(frozen=True)
class ProjectState:
    """The project and what the bootstrap did to it."""

    id: int
    title: str
    action: str  # "created", "updated" or "unchanged"


def label_config(class_names: list[str], template: Path = CONFIG_TEMPLATE) -> str:
    """The labelling config of ``template`` with one ``Label`` per class name."""
    root = ET.fromstring(template.read_text())
    control = root.find("RectangleLabels")
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
    """Create the project, or bring the fields it owns in line; running twice changes nothing."""
    wanted = desired_fields(title, class_names)
    found = client.projects_titled(title)
    if len(found) > 1:
        ids = ", ".join(str(p["id"]) for p in found)
        raise LabellingError(
            f"Label Studio at {client.url} has {len(found)} projects titled '{title}' "
            f"(ids {ids}); rename or delete all but one"
        )
    if not found:
        return ProjectState(int(client.create_project(wanted)["id"]), title, "created")
    project = found[0]
    changed = {k: v for k, v in wanted.items() if project.get(k) != v}
    if not changed:
        return ProjectState(int(project["id"]), title, "unchanged")
    client.update_project(int(project["id"]), changed)
    return ProjectState(int(project["id"]), title, "updated")


def find_project(client: LabelStudioClient, title: str) -> int:
    """Id of the project titled ``title``; a clear error if it was never bootstrapped."""
    found = client.projects_titled(title)
    if len(found) != 1:
        raise LabellingError(
            f"Label Studio at {client.url} has {len(found)} projects titled '{title}'; "
            "run `qcloop labelling bootstrap` first (exactly one is expected)"
        )
    return int(found[0]["id"])

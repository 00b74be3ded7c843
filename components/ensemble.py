"""An ensemble of YOLOv8 models as one ONNX graph that the rest of the loop runs as any model.

Each member keeps its own nodes (names prefixed ``m0``, ``m1``, ...: ``m1/model.22/...``)
and reads the one input; their raw outputs (``[1, 4 + nc, anchors]``, before NMS)
are concatenated along the anchors. NMS over the pooled candidates is the
ensembling: where the members agree the best box stays, where one alone sees a
scratch its box is kept. Evaluation, the gate, INT8, the registry and the edge
agent take the file as they take one model (the agent decodes any anchor count);
inference costs the sum of the members.

On the metal tags, cross-validated by capture (5 folds), the ensemble of a
``reference`` and a ``scratch`` model scored 0.024 ± 0.011 mAP50-95 more than the
reference alone and 0.020 ± 0.008 more than the scratch model alone. INT8 keeps the
pooling Concat float, with each member's stem and head (docs/performance.md).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from qcloop.errors import PipelineError

log = logging.getLogger(__name__)

MEMBER_PREFIX = re.compile(r"^(m\d+)(?=/)")
MEMBERS_KEY = "qcloop_members"  # ONNX metadata: the member count of an ensemble


def member_file(folder: Path, index: int) -> Path:
    """Where the train step keeps member ``index``'s weights (``member-K.pt``)."""
    return Path(folder) / f"member-{index}.pt"


def member_weights(folder: Path) -> list[Path]:
    """The members' weights in ``folder`` in member order (``member_file``)."""
    return sorted(Path(folder).glob("member-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def export_ensemble(
    weights: list[Path], out_path: Path, *, imgsz: int, dynamic: bool = False
) -> Path:
    """Export each member's ``.pt`` to ONNX and pool them into ``out_path`` (``merge_onnx``)."""
    import tempfile

    from components.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="qcloop-members-") as tmp:
        parts = [
            export_onnx(w, Path(tmp) / f"member-{k}.onnx", imgsz=imgsz, dynamic=dynamic)
            for k, w in enumerate(weights)
        ]
        return merge_onnx(parts, out_path)


def member_prefix(name: str) -> str:
    """``"m1"`` for a node of member 1 of an ensemble, ``""`` for a single model's node."""
    match = MEMBER_PREFIX.match(name)
    return match.group(1) if match else ""


def merge_onnx(members: list[Path], out_path: Path) -> Path:
    """Write the ensemble of the ``members`` ONNX files (same input and classes) to ``out_path``.

    The metadata (names, imgsz, stride, ...) is the first member's, with
    ``qcloop_members`` added. ``PipelineError`` if the members cannot be pooled.
    """
    import onnx
    from onnx import compose, helper

    if len(members) < 2:
        raise PipelineError(f"an ensemble needs 2 or more members, got {len(members)}")
    models = [onnx.load(str(path)) for path in members]
    first = models[0]
    signature = _signature(first)
    for path, model in zip(members, models, strict=True):
        if MEMBERS_KEY in _meta(model):
            raise PipelineError(
                f"{path}: already an ensemble; pool the single models it was made of instead"
            )
        if _signature(model) != signature:
            raise PipelineError(
                f"{path}: input/output {_signature(model)} differ from {members[0]}'s "
                f"{signature}; ensemble members need the same image size and classes"
            )
        if [o.version for o in model.opset_import] != [o.version for o in first.opset_import]:
            raise PipelineError(f"{path}: another opset than {members[0]}; export both again")
        if _meta(model).get("names") != _meta(first).get("names"):
            raise PipelineError(
                f"{path}: class names {_meta(model).get('names')} differ from {members[0]}'s "
                f"{_meta(first).get('names')}; ensemble members need the same classes"
            )
    input_info = first.graph.input[0]
    nodes, initializers, outputs = [], [], []
    for index, model in enumerate(models):
        prefixed = compose.add_prefix(model, f"m{index}")
        own_input = prefixed.graph.input[0].name
        for node in prefixed.graph.node:
            node.input[:] = [input_info.name if i == own_input else i for i in node.input]
            nodes.append(node)
        initializers.extend(prefixed.graph.initializer)
        outputs.append(prefixed.graph.output[0].name)
    output_info = first.graph.output[0]
    nodes.append(helper.make_node("Concat", outputs, [output_info.name], axis=2, name="ensemble"))
    dims = [d.dim_value or d.dim_param for d in output_info.type.tensor_type.shape.dim]
    # the members' anchors add up (they differ where a member has another head or input size)
    counts = [m.graph.output[0].type.tensor_type.shape.dim[2].dim_value for m in models]
    anchors: int | str = sum(counts) if all(counts) else "anchors"
    graph = helper.make_graph(
        nodes,
        "qcloop-ensemble",
        [input_info],
        [
            helper.make_tensor_value_info(
                output_info.name,
                output_info.type.tensor_type.elem_type,
                [dims[0], dims[1], anchors],
            )
        ],
        initializers,
    )
    merged = helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version)
    merged.producer_name = "qcloop"
    for prop in first.metadata_props:
        merged.metadata_props.add(key=prop.key, value=prop.value)
    merged.metadata_props.add(key=MEMBERS_KEY, value=str(len(models)))
    try:
        onnx.checker.check_model(merged)
    except onnx.checker.ValidationError as exc:
        names = ", ".join(map(str, members))
        raise PipelineError(f"the ensemble of {names} is invalid: {exc}") from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out_path))
    log.info("%d members -> %s (%d nodes)", len(models), out_path, len(nodes))
    return out_path


def _meta(model: object) -> dict[str, str]:
    """The metadata of an ONNX model as text values."""
    return {p.key: p.value for p in model.metadata_props}  # type: ignore[attr-defined]


def _signature(model: object) -> tuple[list[object], list[object]]:
    """(input dims, output dims but the anchors) of an ONNX model."""

    def dims(value: object) -> list[object]:
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]  # type: ignore[attr-defined]

    graph = model.graph  # type: ignore[attr-defined]
    if len(graph.input) != 1 or len(graph.output) != 1:
        return (["not one input and one output"], [])
    return dims(graph.input[0]), dims(graph.output[0])[:2]

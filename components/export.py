"""Export trained YOLO weights to ONNX: 1x3xNxN input (or dynamic height/width), metadata kept."""

from __future__ import annotations

import ast
import importlib.util
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from qcloop.errors import PipelineError
from qcloop.yolo_env import configure_offline

log = logging.getLogger(__name__)


def export_onnx(weights: Path, out_path: Path, *, imgsz: int, dynamic: bool = False) -> Path:
    """Export ``weights`` (a ``.pt``) to ``out_path`` with a static ``1x3ximgszximgsz`` input.

    With ``dynamic`` the batch, height and width are left free: the edge agent then
    letterboxes each frame to the smallest canvas of stride multiples (a 3:2 frame
    runs at 480x320 instead of 480x480). The graph is simplified when onnxslim is
    installed; the opset is ultralytics' default. The ONNX metadata keeps ``names``,
    ``imgsz`` and ``stride``.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise PipelineError(f"{weights}: no such weights file; train a model first")
    configure_offline()
    from ultralytics import YOLO

    simplify = importlib.util.find_spec("onnxslim") is not None
    shape = "dynamic" if dynamic else "static"
    log.info("%s -> %s (imgsz %d, %s, simplify=%s)", weights, out_path, imgsz, shape, simplify)
    with tempfile.TemporaryDirectory(prefix="qcloop-export-") as tmp:
        # ultralytics writes the .onnx beside the weights: work on a copy named *.pt
        local = Path(tmp) / "model.pt"
        shutil.copyfile(weights, local)
        from torch.jit import TracerWarning

        with warnings.catch_warnings():
            # tracing the detect head always warns (shape-dependent Python branches)
            warnings.simplefilter("ignore", TracerWarning)
            written = YOLO(str(local)).export(
                format="onnx",
                imgsz=imgsz,
                batch=1,
                dynamic=dynamic,
                simplify=simplify,
                device="cpu",
            )
        if not written or not Path(written).is_file():
            raise PipelineError(f"ONNX export of {weights} wrote no file; read the log above")
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(written), out_path)
    check_onnx(out_path, imgsz=imgsz, dynamic=dynamic)
    return out_path


def onnx_metadata(onnx_path: Path) -> dict[str, object]:
    """The ultralytics metadata of an ONNX file, values parsed (names, imgsz, stride, ...).

    ``PipelineError`` naming the file if it is not an ONNX model.
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except OSError:
        raise
    except Exception as exc:
        raise PipelineError(
            f"{onnx_path}: not an ONNX model ({type(exc).__name__}: {exc}); pass an exported "
            "model (the pipeline's export step, or `qcloop model pull NAME@ALIAS`)"
        ) from None
    meta: dict[str, object] = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            meta[prop.key] = prop.value
    return meta


def check_onnx(onnx_path: Path, *, imgsz: int, dynamic: bool = False) -> None:
    """Raise ``PipelineError`` unless the ONNX has a 1x3ximgszximgsz input (or, with
    ``dynamic``, named batch/height/width dimensions) and ultralytics' metadata."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    if dynamic:
        if len(dims) != 4 or dims[1] != 3 or not all(isinstance(d, str) for d in dims[2:]):
            raise PipelineError(f"{onnx_path}: input shape {dims}, expected [N, 3, height, width]")
    elif dims != [1, 3, imgsz, imgsz]:
        raise PipelineError(f"{onnx_path}: input shape {dims}, expected [1, 3, {imgsz}, {imgsz}]")
    missing = {"names", "imgsz", "stride"} - onnx_metadata(onnx_path).keys()
    if missing:
        raise PipelineError(f"{onnx_path}: metadata lacks {sorted(missing)}; re-export it")

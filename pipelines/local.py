"""Running a pipeline definition on this machine with ``kfp.local`` (no cluster, no network)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from qcloop.errors import PipelineError
from qcloop.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def run_locally(
    pipeline: Callable[..., Any],
    name: str,
    *,
    pipeline_root: Path,
    settings: Settings | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Run ``pipeline`` with the subprocess runner of this interpreter; return its outputs.

    ``settings`` becomes ``settings_json``; its secrets reach the steps only as
    ``QCLOOP_*`` variables of their environment, never as parameters.
    """
    from kfp import local

    from components.yolo_env import configure_offline

    configure_offline()  # sets YOLO_*/MLFLOW_* variables that the step subprocesses inherit
    if settings is not None:
        params["settings_json"] = settings.model_dump_json()
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        workspace_root=str(root / "workspace"),
    )
    print(f"[pipeline] {name} locally, outputs under {root}")
    tail = _Tail(sys.stdout)  # kfp prints the steps' output here, line by line
    with (
        _step_environment(secret_variables(settings)),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(tail),
    ):
        # the steps declare the project image; locally they run in this venv instead
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        try:
            return dict(pipeline(**params).outputs)
        except RuntimeError as exc:
            plain = _ANSI.sub("", str(exc))  # kfp colours its messages
            found = tail.last_error()
            said = f" Its error: {found}" if found else ""
            raise PipelineError(
                f"{name} failed locally: {plain}{said} (the step's whole log is above)"
            ) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"\b(\w*(?:Error|Exception|Interrupt)): (.+)$")


class _Tail(io.TextIOBase):
    """Writes through to ``stream`` and keeps the last lines (a failed step's error)."""

    def __init__(self, stream: Any, keep: int = 400) -> None:
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=keep)
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.stream.write(text)
        *done, self._partial = (self._partial + text).split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def last_error(self) -> str | None:
        """The last ``SomeError: message`` line written (a step's exception), plain."""
        for line in reversed([*self.lines, self._partial]):
            match = _ERROR_LINE.search(_ANSI.sub("", line).strip())
            if match:
                return f"{match.group(1)}: {match.group(2)}"
        return None


def compile_to(pipeline: Callable[..., Any], name: str, out: Path) -> Path:
    """Compile ``pipeline`` to KFP IR YAML at ``out`` (for the Kubeflow UI or API)."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    print(f"[compile] {name} -> {out}")
    return out


def secret_variables(settings: Settings | None) -> dict[str, str]:
    """``QCLOOP_<SECTION>__<FIELD>`` for every secret set in ``settings``."""
    found: dict[str, str] = {}
    for section, value in settings or ():
        for field, secret in value if isinstance(value, BaseModel) else ():
            if isinstance(secret, SecretStr):
                found[f"QCLOOP_{section.upper()}__{field.upper()}"] = secret.get_secret_value()
    return found


@contextlib.contextmanager
def _step_environment(extra: dict[str, str]) -> Iterator[None]:
    """Environment of the step subprocesses: this checkout importable, plus ``extra``."""
    saved = {k: os.environ.get(k) for k in (*extra, "PYTHONPATH")}
    os.environ.update(extra)
    paths = (str(ROOT), str(ROOT / "label_studio"), saved["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

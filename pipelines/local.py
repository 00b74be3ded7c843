"""Running a pipeline definition on this machine with ``kfp.local`` (no cluster, no network)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from qcloop.errors import PipelineError
from qcloop.settings import ENV_PREFIX, NOT_SETTINGS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
STEPS_LOGGER = f"{__name__}.steps"

log = logging.getLogger(__name__)
steps_log = logging.getLogger(STEPS_LOGGER)


def run_locally(
    pipeline: Callable[..., Any],
    name: str,
    *,
    pipeline_root: Path,
    settings: Settings | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Run ``pipeline`` with the subprocess runner of this interpreter; return its outputs.

    ``settings`` (default: loaded from qcloop.toml and the environment) reach the steps
    as ``QCLOOP_*`` variables of their environment, as the chart's ConfigMap and
    Secret do on a cluster: never as parameters.
    """
    from kfp import local

    from qcloop.yolo_env import configure_offline

    configure_offline()  # sets YOLO_*/MLFLOW_* variables that the step subprocesses inherit
    settings = settings if settings is not None else load_settings()
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        workspace_root=str(root / "workspace"),
    )
    log.info("%s locally, outputs under %s", name, root)
    steps = _StepLines(sys.stdout)
    with (
        _step_environment(settings_variables(settings, root)),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(steps),
    ):
        # the steps declare the project image; locally they run in this venv instead
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        try:
            return dict(pipeline(**params).outputs)
        except RuntimeError as exc:
            plain = _ANSI.sub("", str(exc))  # kfp colours its messages
            found = steps.last_error()
            said = f" Its error: {found}" if found else ""
            raise PipelineError(
                f"{name} failed locally: {plain}{said} (the step's whole log is above)"
            ) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"\b(\w*(?:Error|Exception|Interrupt)): (.+)$")


class _StepLines(io.TextIOBase):
    """What kfp.local prints, as records of ``STEPS_LOGGER``; keeps the last lines.

    kfp.local prints each step's output (the step subprocess's stdout and stderr) with
    ``print`` and its own messages through a root handler on ``sys.stdout``, so standing
    in for ``sys.stdout`` is the one way to receive them. While a task runs kfp replaces
    the root logger's handlers with that one: a record of ours that propagates there
    (nobody configured this project's loggers) comes back here, and its line goes to
    ``stream``, the ``sys.stdout`` kfp would have printed it to.
    """

    def __init__(self, stream: Any, keep: int = 400) -> None:
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=keep)
        self._partial = ""
        self._lock = threading.Lock()
        self._logging = threading.local()  # .line: the line whose record is being handled

    def writable(self) -> bool:
        """A text stream that accepts writes."""
        return True

    def write(self, text: str) -> int:
        """Log each completed line (colours removed, blank lines skipped)."""
        if hasattr(self._logging, "line"):
            self._echo()
            return len(text)
        with self._lock:
            *done, self._partial = (self._partial + text).split("\n")
        for line in done:
            self._log(_ANSI.sub("", line).rstrip())
        return len(text)

    def _log(self, line: str) -> None:
        self.lines.append(line)
        if not line.strip():
            return
        self._logging.line = line
        try:
            steps_log.info("%s", line)
        finally:
            del self._logging.line

    def _echo(self) -> None:
        """Print the line being logged to ``stream``, once, as kfp would have."""
        line, self._logging.line = self._logging.line, None
        if line is not None:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        """Flush the stream records fall back to."""
        self.stream.flush()

    def last_error(self) -> str | None:
        """The last ``SomeError: message`` line written (a step's exception), plain."""
        for line in reversed([*self.lines, self._partial]):
            match = _ERROR_LINE.search(_ANSI.sub("", line).strip())
            if match:
                return f"{match.group(1)}: {match.group(2)}"
        return None


def settings_variables(settings: Settings, root: Path) -> dict[str, str]:
    """``QCLOOP_<SECTION>__<FIELD>`` for every field of ``settings`` that is set, secrets
    included, and ``QCLOOP_CONFIG`` naming an empty file under ``root``: a step loads
    exactly these settings, whatever qcloop.toml lies in its working folder."""
    empty = root / "settings.toml"
    empty.write_text("# the steps' settings are their QCLOOP_* variables\n")
    found = {"QCLOOP_CONFIG": str(empty)}
    found.update(_variables(settings))
    return found


def _variables(model: BaseModel, prefix: str = ENV_PREFIX) -> dict[str, str]:
    """``<prefix><FIELD>`` for every field set, nested sections joined by ``__``."""
    found: dict[str, str] = {}
    for field, item in model:
        var = f"{prefix}{field}".upper()
        if item is None:
            continue
        if isinstance(item, BaseModel):
            found.update(_variables(item, f"{var}__"))
            continue
        if isinstance(item, SecretStr):
            item = item.get_secret_value()
        elif isinstance(item, list):
            item = ",".join(str(i) for i in item)
        found[var] = str(item)
    return found


@contextlib.contextmanager
def _step_environment(extra: dict[str, str]) -> Iterator[None]:
    """Environment of the step subprocesses: this checkout importable, plus ``extra``,
    and no other settings variable of this process."""
    others = [k for k in os.environ if k.startswith(ENV_PREFIX) and not k.startswith(NOT_SETTINGS)]
    saved = {k: os.environ.get(k) for k in (*extra, *others, "PYTHONPATH")}
    for key in others:
        os.environ.pop(key)
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

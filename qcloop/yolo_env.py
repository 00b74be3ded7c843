"""Make ultralytics work fully offline (no hub, no font download, no auto-install).

Used by the training room and by the labelling room (model-assisted labelling, the ML
backend), wherever ultralytics runs.

Call ``configure_offline()`` before importing ultralytics. It sets the
environment variables ultralytics reads at import time, pre-places the font that
its plotting and dataset checks would otherwise fetch, and switches off its own
MLflow/other integrations (qcloop logs to MLflow itself). Ultralytics' own log lines
go to stderr (``logs_to_stderr``), so that a command's stdout carries only its result.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

_DONE: set[str] = set()


def configure_offline(config_dir: Path | None = None) -> Path:
    """Prepare an offline ultralytics config dir and return it (idempotent)."""
    base = Path(
        config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path(".qcloop") / "ultralytics"
    ).resolve()
    key = str(base)
    os.environ["YOLO_CONFIG_DIR"] = key
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if key in _DONE:
        logs_to_stderr()
        return base
    fonts = base / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = fonts / name
        if not target.exists():
            shutil.copyfile(dejavu, target)
    from ultralytics import settings as found

    settings: Any = found  # its SettingsManager, typed or not depending on how it is installed
    wanted = {
        "mlflow": False,
        "wandb": False,
        "tensorboard": False,
        "clearml": False,
        "comet": False,
        "dvc": False,
        "neptune": False,
        "raytune": False,
        "sync": False,
    }
    # keys differ between ultralytics releases (8.4 has no 'neptune'): set the ones it knows
    settings.update({k: v for k, v in wanted.items() if k in settings})
    _DONE.add(key)
    logs_to_stderr()
    return base


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def logs_to_stderr() -> None:
    """Point the console handlers of ultralytics' logger (``"ultralytics"``, which it
    sets up on sys.stdout at import) at sys.stderr; the log level is left as it is.

    Its progress bars write to sys.stdout and show only when ``YOLO_VERBOSE`` is true,
    which ultralytics reads once, at import: the variable is applied again here, so
    that the bars stay off (``configure_offline`` sets it false unless the user set it)
    even where ultralytics was imported before it was set.
    """
    from ultralytics import utils
    from ultralytics.utils import LOGGER

    utils.VERBOSE = os.environ.get("YOLO_VERBOSE", "False").lower() == "true"
    for handler in LOGGER.handlers:
        if type(handler) is logging.StreamHandler and not isinstance(
            handler.stream, _CurrentStderr
        ):
            handler.setStream(_CurrentStderr())

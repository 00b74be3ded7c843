"""Make ultralytics work fully offline (no hub, no font download, no auto-install).

Call ``configure_offline()`` before importing ultralytics. It sets the
environment variables ultralytics reads at import time, pre-places the font that
its plotting and dataset checks would otherwise fetch, and switches off its own
MLflow/other integrations (qcloop logs to MLflow itself).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
        return base
    fonts = base / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = fonts / name
        if not target.exists():
            shutil.copyfile(dejavu, target)
    from ultralytics import settings

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
    return base

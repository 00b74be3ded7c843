"""Settings of the labelling sync: the ``[label_studio]`` section of the core settings.

``QCLOOP_LABEL_STUDIO__URL``, ``QCLOOP_LABEL_STUDIO__TOKEN``, ... or the
``[label_studio]`` table of ``qcloop.toml`` (see ``qcloop.settings.LabelStudioSettings``).
"""

from __future__ import annotations

from pathlib import Path

from qcloop.settings import LabelStudioSettings, Settings, load_settings

__all__ = ["LabelStudioSettings", "load_all"]


def load_all(path: Path | None = None) -> tuple[Settings, LabelStudioSettings]:
    """Core settings and their Label Studio section."""
    settings = load_settings(path)
    return settings, settings.label_studio

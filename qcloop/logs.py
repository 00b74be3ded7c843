"""Logging of the command-line entry points: this project's records on stderr, one line each.

Modules log with ``log = logging.getLogger(__name__)`` and never print; an entry point
calls ``configure_logging()`` once, so progress goes to stderr, named by the module that
said it, and stdout holds only the command's result.
"""

from __future__ import annotations

import logging
import sys

PROJECT_LOGGERS = ("qcloop", "components", "pipelines", "qcloop_labelling")
LINE_FORMAT = "[%(name)s] %(message)s"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the current ``sys.stderr``."""
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Send this project's records at ``level`` and up to stderr as ``[module] message``.

    Other libraries' loggers keep their own configuration. Calling it again changes the
    level and adds no second handler.
    """
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        if not any(isinstance(h, StderrHandler) for h in logger.handlers):
            logger.addHandler(handler)

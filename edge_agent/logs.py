"""JSON-lines logging to stderr: one object per line, ``extra={...}`` fields included."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object; the caller must never pass secrets in ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Repeated warnings and errors: at most this many lines of one kind a window, then one
# summary line when the window rolls (the one place these numbers are set).
REPEAT_LIMIT = 5
REPEAT_WINDOW_S = 60.0
_Key = tuple[str, str, int]  # logger name, message template, level


class RepeatFilter(logging.Filter):
    """Rate-limit repeated warnings and errors on a handler; info and debug pass.

    A kind of line is (logger, message template, level): its first ``limit`` lines in a
    window of ``window_s`` pass, the rest are counted and dropped. When the window rolls
    (checked on every line, and by :meth:`flush` at the end) one line of that logger and
    level says "<template> ... repeated N times in the last M s" and gives the count in
    ``suppressed``. ``emit`` writes that line (the handler's ``handle``).
    """

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        limit: int = REPEAT_LIMIT,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._emit, self._limit, self._window_s, self._clock = emit, limit, window_s, clock
        self._lock = threading.Lock()
        self._windows: dict[_Key, list[float]] = {}  # key -> [start, lines, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "suppressed", None) is not None:
            return True  # a summary
        now = self._clock()
        passes = True
        with self._lock:
            rolled = self._roll(now) if self._windows else []
            if record.levelno >= logging.WARNING:
                key = (record.name, str(record.msg), record.levelno)
                window = self._windows.setdefault(key, [now, 0, 0])
                window[1] += 1
                passes = window[1] <= self._limit
                window[2] += not passes
        self._summarize(rolled)
        return passes

    def flush(self) -> None:
        """Write the summary of every window that suppressed lines (at the end)."""
        with self._lock:
            rolled = [(key, self._clock() - w[0], int(w[2])) for key, w in self._windows.items()]
            self._windows.clear()
        self._summarize(rolled)

    def _roll(self, now: float) -> list[tuple[_Key, float, int]]:
        """Close the windows older than ``window_s``; those that suppressed lines, to report."""
        ended = [key for key, w in self._windows.items() if now - w[0] >= self._window_s]
        windows = [(key, self._windows.pop(key)) for key in ended]
        return [(key, now - w[0], int(w[2])) for key, w in windows]

    def _summarize(self, rolled: list[tuple[_Key, float, int]]) -> None:
        for (name, template, level), elapsed, suppressed in rolled:
            if suppressed:
                text = f"{template} ... repeated {suppressed} times in the last {elapsed:.0f} s"
                summary = logging.LogRecord(name, level, "", 0, text, None, None)
                summary.suppressed = suppressed
                self._emit(summary)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a thread: one JSON error line, not a bare traceback."""
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    thread = args.thread.name if args.thread is not None else None
    logging.getLogger("edge_agent").error(
        "thread died", exc_info=exc_info, extra={"thread_name": thread}
    )


@contextmanager
def json_logging(level: int = logging.INFO, stream: TextIO | None = None) -> Iterator[None]:
    """Send all logs to ``stream`` as JSON lines while inside.

    Python warnings (e.g. Pillow's ``DecompressionBombWarning``) and exceptions that
    end a thread go through logging too, so every line on ``stream`` is JSON. Repeated
    warnings and errors are rate-limited (:class:`RepeatFilter`).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    repeats = RepeatFilter(handler.handle)
    handler.addFilter(repeats)
    root = logging.getLogger()
    previous_level = root.level
    previous_hook = threading.excepthook
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    try:
        yield
    finally:
        threading.excepthook = previous_hook
        logging.captureWarnings(False)
        repeats.flush()
        root.removeHandler(handler)
        root.setLevel(previous_level)

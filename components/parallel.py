"""Run calls of one function at once, each in a spawned process, their logs kept.

A spawned process starts with no logging configuration: its records would be lost.
Here each process sends its records back through a queue, and this process's logger
of the same name handles them, so they end where this process's own records do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

Call = tuple[tuple[Any, ...], dict[str, Any]]


class CallFailed(Exception):
    """Call ``index`` raised (the exception is its ``__cause__``)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"call {index} failed")
        self.index = index


def run_at_once(function: Callable[..., T], calls: list[Call]) -> list[T]:
    """``function(*args, **kwargs)`` for every call at once, each in a spawned process;
    the results in order. The first call (in order) that raised ends the others
    (``CallFailed``)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    context = get_context("spawn")
    with (
        forwarded_logs(context) as (initializer, initargs),
        ProcessPoolExecutor(
            max_workers=len(calls), mp_context=context, initializer=initializer, initargs=initargs
        ) as pool,
    ):
        futures = [pool.submit(function, *args, **kwargs) for args, kwargs in calls]
        results = []
        for index, future in enumerate(futures):
            try:
                results.append(future.result())
            except Exception as exc:
                pool.shutdown(cancel_futures=True)
                raise CallFailed(index) from exc
        return results


@contextmanager
def forwarded_logs(context: Any) -> Iterator[tuple[Callable[..., None], tuple[Any, ...]]]:
    """The ``initializer`` and ``initargs`` of a process pool of ``context`` whose
    processes send their log records here, while the block runs."""
    from logging.handlers import QueueListener

    records: Any = context.Queue()
    listener = QueueListener(records, _HandOver())
    listener.start()
    try:
        yield _send_logs, (records, logging.getLogger("components").getEffectiveLevel())
    finally:
        listener.stop()


class _HandOver(logging.Handler):
    """Hands a record of another process to this process's logger of its name."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _send_logs(records: Any, level: int) -> None:
    """In a spawned process: send every record of ``level`` and up to ``records``."""
    from logging.handlers import QueueHandler

    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(level)

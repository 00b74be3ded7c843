"""Repeated warnings and errors are rate-limited in the agent's JSON log, with a summary."""

from __future__ import annotations

import io
import json
import logging

import pytest

from edge_agent.logs import REPEAT_LIMIT, JsonFormatter, RepeatFilter, json_logging


def test_a_thousand_identical_errors_give_a_few_lines_and_one_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # when the same error is logged 1000 times in a loop inside the agent's JSON logging
    with json_logging(logging.INFO):
        log = logging.getLogger("edge_agent.feedback")
        for n in range(1000):
            log.error("upload failed", extra={"attempt": n})
    # then stderr holds the first few, and one line that counts the rest
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == REPEAT_LIMIT + 1
    assert [e["attempt"] for e in lines[:REPEAT_LIMIT]] == list(range(REPEAT_LIMIT))
    summary = lines[-1]
    assert (summary["level"], summary["logger"]) == ("error", "edge_agent.feedback")
    assert summary["suppressed"] == 1000 - REPEAT_LIMIT
    assert summary["msg"].startswith("upload failed ... repeated 995 times in the last")


def test_different_messages_levels_and_info_lines_are_not_suppressed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # when 20 different errors, and 20 identical info lines, are logged
    with json_logging(logging.INFO):
        log = logging.getLogger("edge_agent.sources")
        for n in range(20):
            log.error(f"frame {n} unreadable")
            log.info("feedback image uploaded", extra={"key": n})
    # then every one of them is on stderr, and nothing was summarized
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 40
    assert not any("suppressed" in e for e in lines)


def test_the_summary_comes_when_the_window_rolls() -> None:
    # given a handler rate-limited to 2 lines a 60 s window, on a clock the test moves
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(handler.handle, limit=2, window_s=60.0, clock=lambda: now[0]))
    log = logging.getLogger("edge_agent.test-repeats")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        # when one error repeats 10 times in the first 30 s
        for _ in range(10):
            log.error("store down: %s", "timeout")
            now[0] += 3.0
        before_roll = len(stream.getvalue().splitlines())
        # and, once the window has rolled, an info line and the error again
        now[0] = 61.0
        log.info("store back")
        log.error("store down: %s", "timeout")
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    # then 2 lines passed in the window; the next line logged brought the summary of the 8 others
    assert before_roll == 2
    assert [e["msg"] for e in lines] == [
        "store down: timeout",
        "store down: timeout",
        "store down: %s ... repeated 8 times in the last 61 s",
        "store back",
        "store down: timeout",
    ]
    assert lines[2]["suppressed"] == 8 and lines[2]["level"] == "error"

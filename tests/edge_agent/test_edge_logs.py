"""The agent's log: every line on stderr is one JSON object, warnings and dying threads too."""

from __future__ import annotations

import io
import json
import logging
import threading
import warnings

import pytest
from PIL import Image

from edge_agent.logs import json_logging


def test_warnings_and_thread_deaths_are_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # given Pillow's decompression-bomb warning armed for a 90x90 image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    buffer = io.BytesIO()
    Image.new("L", (90, 90)).save(buffer, format="PNG")
    stream = io.StringIO()
    # when, inside the agent's JSON logging, Pillow warns and a thread dies
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with json_logging(logging.INFO, stream):
            logging.getLogger("edge_agent.test").info("before")
            Image.open(io.BytesIO(buffer.getvalue()))
            thread = threading.Thread(target=lambda: 1 / 0, name="qcloop-doomed")
            thread.start()
            thread.join()
    # then every line is a JSON object, the warning and the traceback included
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["level"] for entry in lines] == ["info", "warning", "error"]
    assert "DecompressionBombWarning" in lines[1]["msg"]
    assert lines[2]["thread_name"] == "qcloop-doomed" and "ZeroDivisionError" in lines[2]["exc"]

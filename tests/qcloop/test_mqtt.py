"""MQTT client ids: readable, but never guessable from the device id alone."""

from __future__ import annotations

from qcloop.mqtt import client_id


def test_client_ids_name_the_device_and_cannot_be_guessed() -> None:
    first, second = client_id("qcloop-edge", "cam-1"), client_id("qcloop-edge", "cam-1")
    assert first.startswith("qcloop-edge-cam-1-") and second.startswith("qcloop-edge-cam-1-")
    assert first != second  # another client cannot take over the session by reusing it
    assert len(first.rsplit("-", 1)[1]) == 12

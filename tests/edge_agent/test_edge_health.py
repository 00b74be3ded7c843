"""Honest health: the heartbeat and ``qcloop-edge status`` count each kind of trouble apart,
the operator commands need only MQTT, and messages the MQTT queue drops are counted."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.link import MqttLink
from edge_agent.stats import Counters
from qcloop.devices import DeviceState
from qcloop.mqtt import publish_retained, state_topic, verdict_topic
from qcloop.settings import MqttSettings, StoreSettings
from tests.edge_agent.edge_helpers import (
    Listener,
    make_config,
    make_constant_model,
    publish,
    wait_until,
    write_toml,
)
from tests.services import free_port


def write_config(tmp_path: Path, mqtt_url: str, device: str) -> Path:
    return write_toml(tmp_path, device, mqtt_url, source='kind = "simulated"')


@pytest.mark.integration
def test_operator_commands_need_only_mqtt_on_a_box_set_up_as_documented(
    mqtt_url: str,
    tmp_path: Path,
    listen: Callable[[str], Listener],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a config as docs/edge.md says: an S3 store and a camera whose keys and URL
    # live only in the unit's environment file, not in this shell
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        'device_id = "cam-ops"\nfleet = "line-ops"\n'
        '[source]\nkind = "camera"\n'
        f'[mqtt]\nurl = "{mqtt_url}"\n'
        '[store]\nkind = "s3"\nendpoint = "http://minio:9000"\nbucket = "qcloop"\n'
    )
    for name in ("QCLOOP_EDGE_STORE__ACCESS_KEY", "QCLOOP_EDGE_STORE__SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    state = DeviceState(status="serving", device_id="cam-ops", fleet="line-ops")
    payload = state.model_dump_json().encode()
    publish_retained(MqttSettings(url=mqtt_url), state_topic("cam-ops"), payload)
    verdicts = listen(verdict_topic("cam-ops"))
    # when the operator asks for the state and sends a verdict
    status_rc = main(["status", "--config", str(config_file), "--json"])
    printed = capsys.readouterr().out
    verdict_rc = main(
        ["verdict", "--config", str(config_file), "--frame", "a.jpg", "--verdict", "false_alarm"]
    )
    # then both work; only the agent itself (check-config, run) needs the store's keys
    assert status_rc == 0 and DeviceState.model_validate_json(printed).status == "serving"
    assert verdict_rc == 0
    wait_until(lambda: len(verdicts.on(verdict_topic("cam-ops"))) == 1, what="the verdict")
    assert main(["check-config", "--config", str(config_file)]) == 1
    assert "store.access_key" in capsys.readouterr().err


@pytest.mark.integration
def test_heartbeat_and_status_count_each_kind_of_trouble_apart(
    mqtt_url: str,
    metal_tags: Path,
    tmp_path: Path,
    listen: Callable[[str], Listener],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given an agent whose store is unreachable, a junk file among its frames,
    # and a garbage release on its fleet's topic
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = StoreSettings(kind="local", path=blocker / "store")
    fast = {"backoff_initial_s": 0.1, "backoff_max_s": 0.2, "drain_timeout_s": 0.0}
    config = make_config(tmp_path, mqtt_url, store, "cam-trouble", feedback=fast)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "notes.txt").write_text("not an image")
    for photo in sorted((metal_tags / "images").glob("*.jpg"))[:2]:
        shutil.copy(photo, inbox / photo.name)
    publish(mqtt_url, config.fleet, b"not a release")
    listener = listen(state_topic("cam-trouble"))
    model = make_constant_model(tmp_path / "blank.onnx", np.zeros((1, 84, 10), np.float32))
    agent = Agent(config, initial_model=model)
    thread = threading.Thread(target=lambda: agent.run(timeout_s=30), daemon=True)
    thread.start()

    def last() -> DeviceState | None:
        beats = listener.on(state_topic("cam-trouble"))
        return DeviceState.model_validate_json(beats[-1]) if beats else None

    def troubled() -> bool:
        beat = last()
        return beat is not None and beat.upload_failures >= 2 and beat.releases_refused == 1

    try:
        # when it has run a few heartbeats
        wait_until(troubled, what="a heartbeat with refusals and upload failures")
        beat = last()
        assert beat is not None
        # then each kind of trouble is counted apart, the refusal with its reason
        assert beat.frames_rejected == 1 and beat.spool_depth == 2
        assert beat.release_last_error is not None and "invalid release" in beat.release_last_error
        assert beat.errors >= beat.upload_failures + beat.releases_refused + beat.frames_rejected
        assert (
            main(["status", "--config", str(write_config(tmp_path, mqtt_url, "cam-trouble"))]) == 0
        )
        table = capsys.readouterr().out
        assert "releases refused: 1 (last: invalid release" in table
        assert "frames rejected:  1" in table and "upload failures:" in table
    finally:
        agent.stop()
        thread.join(15)


def test_a_full_mqtt_queue_drops_the_newest_messages_and_counts_them(tmp_path: Path) -> None:
    # given a link to a broker that is away, holding at most three messages
    store = StoreSettings(kind="local", path=tmp_path / "store")
    url = f"mqtt://127.0.0.1:{free_port()}"
    config = make_config(tmp_path, url, store, "cam-queue", link={"max_queued": 3})
    counters = Counters()
    link = MqttLink(config, lambda _payload, _origin: None, None, counters)
    # when five results and a heartbeat are published
    for n in range(5):
        link.publish_result(f'{{"n": {n}}}')
    beat = link.publish_state(DeviceState(status="serving", device_id="cam-queue", fleet="f"))
    # then the three oldest are kept, the three newest dropped (the heartbeat too), counted
    assert counters.get("mqtt_dropped") == 3
    with pytest.raises(ValueError, match="ERR_QUEUE_SIZE"):
        beat.is_published()

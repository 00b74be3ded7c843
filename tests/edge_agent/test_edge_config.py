"""EdgeConfig: one TOML file + QCLOOP_EDGE_* variables, validated at start, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import ENV_PREFIX, EdgeConfig, load_config
from qcloop.errors import ConfigError
from qcloop.settings import env_overrides

EXAMPLE = Path(__file__).resolve().parents[2] / "edge_agent" / "qcloop-edge.example.toml"
SECRETS = {"QCLOOP_EDGE_STORE__ACCESS_KEY": "edge-key", "QCLOOP_EDGE_STORE__SECRET_KEY": "s3cr3t"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


MINIMAL = (
    'device_id = "cam1"\n[source]\nkind = "simulated"\n[release]\npublic_key = "release.pub"\n'
)


def test_the_example_loads_with_secrets_from_the_environment() -> None:
    # given the shipped example and the secrets as variables (as under systemd)
    config = load_config(EXAMPLE, environ=SECRETS)
    # then every section is read
    assert config.device_id == "line1-cam1"
    assert config.source.kind == "folder" and config.source.processed == "move"
    assert config.thresholds.feedback_below == 0.5
    assert config.store.kind == "s3" and config.store.secret_key is not None
    assert config.store.secret_key.get_secret_value() == "s3cr3t"
    assert config.mqtt.fleet == config.fleet == "default"


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert (config.thresholds.confidence, config.thresholds.iou) == (0.25, 0.7)
    assert config.thresholds.feedback_below == 0.5
    assert config.ort_threads == 1 and config.store.kind == "local"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    # given a file and variables for a top-level field, a section field and a nested one
    env = {
        "QCLOOP_EDGE_DEVICE_ID": "cam9",
        "QCLOOP_EDGE_MQTT__URL": "mqtt://broker.local:1884",
        "QCLOOP_EDGE_THRESHOLDS__CONFIDENCE": "0.4",
        "QCLOOP_EDGE_ORT_THREADS": "2",
        "QCLOOP_MQTT__URL": "mqtt://platform:1883",  # the platform's variable: not ours
    }
    # when loaded
    config = load_config(write(tmp_path, MINIMAL), environ=env)
    # then the variables win, typed
    assert config.device_id == "cam9"
    assert (config.mqtt.host, config.mqtt.port) == ("broker.local", 1884)
    assert config.thresholds.confidence == 0.4 and config.ort_threads == 2


def test_env_overrides_nests_sections() -> None:
    tree = env_overrides(
        {"QCLOOP_EDGE_SOURCE__PATH": "/in", "QCLOOP_EDGE_FLEET": "f", "HOME": "x"}, ENV_PREFIX
    )
    assert tree == {"source": {"path": "/in"}, "fleet": "f"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('device_id = "cam 1"\n[source]\nkind = "simulated"\n', "device_id"),
        ('[source]\nkind = "simulated"\n', "device_id"),
        (MINIMAL + "[thresholds]\nconfidence = 1.5\n", "thresholds.confidence"),
        (MINIMAL.replace("simulated", "folder"), "source"),
        (MINIMAL + 'colour = "red"\n', "colour"),
        (MINIMAL + "[mqtt]\nurl = 'http://broker'\n", "mqtt"),
        (MINIMAL + "[store]\nkind = 's3'\n", "store"),
        ('fleet = "a"\n' + MINIMAL + '[mqtt]\nfleet = "b"\n', "fleet"),
        ('colour = "red"\n' + MINIMAL, "colour"),
    ],
)
def test_bad_files_name_the_field(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(path) in str(caught.value)
    assert named in str(caught.value)


def test_a_bad_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ort_threads"):
        load_config(write(tmp_path, MINIMAL), environ={"QCLOOP_EDGE_ORT_THREADS": "many"})


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = "), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})


def test_mqtt_fleet_alone_sets_the_fleet(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + '[mqtt]\nfleet = "line2"\n'), environ={})
    assert config.fleet == config.mqtt.fleet == "line2"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.device_id = "other"  # type: ignore[misc]
    assert isinstance(config, EdgeConfig)


def test_check_config_prints_it_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QCLOOP_EDGE_MQTT__PASSWORD", "mqtt-pass")
    assert main(["check-config", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "edge-key" not in out and "mqtt-pass" not in out
    printed = json.loads(out)
    assert printed["store"]["secret_key"] == "**********"
    assert printed["mqtt"]["password"] == "**********"
    assert printed["device_id"] == "line1-cam1"


def test_check_config_and_run_exit_1_on_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL + "[thresholds]\niou = 0\n")
    assert main(["check-config", "--config", str(path)]) == 1
    assert main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("thresholds.iou") == 2


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert main(["frobnicate"]) == 2
    assert "usage" in capsys.readouterr().err


def test_state_dir_defaults_beside_model_dir(tmp_path: Path) -> None:
    text = MINIMAL.replace("[source]", f'model_dir = "{tmp_path}/edge/models"\n[source]')
    assert load_config(write(tmp_path, text), environ={}).state_dir == tmp_path / "edge" / "state"
    assert load_config(write(tmp_path, MINIMAL), environ={}).state_dir == Path(".qcloop-edge/state")

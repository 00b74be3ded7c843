"""Settings: defaults, TOML, environment, clear errors, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcloop.errors import ConfigError
from qcloop.settings import load_settings


def test_defaults_are_the_embedded_default() -> None:
    settings = load_settings(environ={})
    assert settings.store.kind == "local"
    assert settings.mlflow.tracking_uri.startswith("sqlite:///")
    assert settings.mqtt.port == 1883


def test_toml_then_environment(tmp_path: Path) -> None:
    conf = tmp_path / "q.toml"
    conf.write_text('[mqtt]\nurl = "mqtt://broker:1999"\nfleet = "line-1"\n')
    settings = load_settings(conf, environ={"QCLOOP_MQTT__FLEET": "line-2"})
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.fleet) == (
        "broker",
        1999,
        "line-2",
    )


def test_s3_needs_credentials_named() -> None:
    with pytest.raises(ConfigError, match="store.access_key"):
        load_settings(
            environ={"QCLOOP_STORE__KIND": "s3", "QCLOOP_STORE__ENDPOINT": "http://x:9000"}
        )


def test_secrets_are_masked() -> None:
    settings = load_settings(
        environ={
            "QCLOOP_STORE__KIND": "s3",
            "QCLOOP_STORE__ENDPOINT": "http://x:9000",
            "QCLOOP_STORE__ACCESS_KEY": "AKIA-visible-key",
            "QCLOOP_STORE__SECRET_KEY": "very-secret-value",
        }
    )
    dumped = settings.model_dump_json() + repr(settings)
    assert "very-secret-value" not in dumped and "AKIA-visible-key" not in dumped


def test_bad_toml_names_file(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(conf, environ={})


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "q.toml"
    conf.write_text("[mqtt]\nurll = 'mqtt://x'\n")
    with pytest.raises(ConfigError, match="mqtt.urll"):
        load_settings(conf, environ={})

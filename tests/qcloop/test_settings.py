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
    with pytest.raises(ConfigError, match=r"store.access_key"):
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
    with pytest.raises(ConfigError, match=r"bad.toml"):
        load_settings(conf, environ={})


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "q.toml"
    conf.write_text("[mqtt]\nurll = 'mqtt://x'\n")
    with pytest.raises(ConfigError, match=r"mqtt.urll"):
        load_settings(conf, environ={})


def test_kubernetes_service_links_are_not_settings() -> None:
    # Given the variables Kubernetes injects into a pod of a namespace holding the release
    # `qcloop` (Services qcloop-minio, qcloop-mlflow, ...), beside the chart's own settings
    links = {
        "QCLOOP_MINIO_SERVICE_HOST": "10.96.0.12",
        "QCLOOP_MINIO_SERVICE_PORT": "9000",
        "QCLOOP_MINIO_SERVICE_PORT_API": "9000",
        "QCLOOP_MINIO_PORT": "tcp://10.96.0.12:9000",
        "QCLOOP_MINIO_PORT_9000_TCP": "tcp://10.96.0.12:9000",
        "QCLOOP_MINIO_PORT_9000_TCP_ADDR": "10.96.0.12",
        "QCLOOP_MINIO_PORT_9000_TCP_PORT": "9000",
        "QCLOOP_MINIO_PORT_9000_TCP_PROTO": "tcp",
        "QCLOOP_MOSQUITTO_PORT_1883_UDP": "udp://10.96.0.13:1883",
        "QCLOOP_SERVICE_HOST": "10.96.0.14",  # a Service named `qcloop`
        "QCLOOP_PORT": "tcp://10.96.0.14:80",
    }
    # When settings load, Then the links are no settings and the real ones hold
    settings = load_settings(environ={**links, "QCLOOP_MLFLOW__MODEL_NAME": "m"})
    assert settings.mlflow.model_name == "m"
    # a misspelt setting is still refused by name
    with pytest.raises(ConfigError, match="store_endpoint"):
        load_settings(environ={**links, "QCLOOP_STORE_ENDPOINT": "http://x:9000"})


def test_an_empty_variable_is_unset() -> None:
    # a ConfigMap key left empty (no region for MinIO): the default holds
    settings = load_settings(environ={"QCLOOP_STORE__REGION": "", "QCLOOP_MQTT__FLEET": "line-2"})
    assert settings.store.region is None and settings.mqtt.fleet == "line-2"


def test_approvers_and_production_fleets_are_lists_and_off_by_default() -> None:
    # off by default: the bridge checks no approval (and warns on every release)
    release = load_settings(environ={}).release
    assert (release.approvers, release.production_fleets) == ([], [])
    # a plant names its approvers' keys (files or folders) and its production fleets
    release = load_settings(
        environ={
            "QCLOOP_RELEASE__APPROVERS": "/etc/qcloop/approvers,/keys/alice.pub",
            "QCLOOP_RELEASE__PRODUCTION_FLEETS": "line-1,line-2",
        }
    ).release
    assert release.approvers == [Path("/etc/qcloop/approvers"), Path("/keys/alice.pub")]
    assert release.production_fleets == ["line-1", "line-2"]


def test_a_step_in_a_pod_with_the_one_machine_default_stops_with_what_to_do() -> None:
    from qcloop.settings import step_settings

    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    # Given a pod of a namespace the chart did not render qcloop-platform into
    with pytest.raises(ConfigError) as refused:
        step_settings(pod)
    said = str(refused.value)
    assert "store.kind = local" in said and "sqlite:///.qcloop/mlflow.db" in said
    assert "pipelines.namespaces" in said and "qcloop-platform" in said
    # Given the chart's ConfigMap and Secret: the step runs with them
    cluster = {
        **pod,
        "QCLOOP_STORE__KIND": "s3",
        "QCLOOP_STORE__ENDPOINT": "http://qcloop-minio.qcloop.svc:9000",
        "QCLOOP_STORE__ACCESS_KEY": "ak",
        "QCLOOP_STORE__SECRET_KEY": "sk",
        "QCLOOP_DVC__REMOTE": "s3://qcloop/dvc",
        "QCLOOP_MLFLOW__TRACKING_URI": "http://qcloop-mlflow.qcloop.svc:5000",
    }
    assert step_settings(cluster).store.endpoint == "http://qcloop-minio.qcloop.svc:9000"
    # outside a pod, the one-machine default is what a local run wants
    assert step_settings({}).store.kind == "local"


def test_the_tools_own_variables_are_not_settings(tmp_path: Path) -> None:
    # a shell that points the tests and the demo at a Label Studio binary, or stamps a code
    # version, still loads its settings
    environ = {
        "QCLOOP_LABEL_STUDIO_BIN": str(tmp_path / "ls" / "bin" / "label-studio"),
        "QCLOOP_CODE_VERSION": "abc1234",
        "QCLOOP_EDGE_DEVICE_ID": "cam-1",
        "QCLOOP_MQTT__URL": "mqtt://broker:1883",
    }
    assert load_settings(None, environ=environ).mqtt.url == "mqtt://broker:1883"

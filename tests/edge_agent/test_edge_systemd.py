"""The systemd unit (verified by systemd-analyze) and sd_notify over a real datagram socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import Watchdog, notify, watchdog_period
from tests.edge_agent.edge_helpers import write_toml

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "edge_agent" / "qcloop-edge.service"
EXEC = "/opt/qcloop-edge/bin/qcloop-edge"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # given a copy of the unit whose ExecStart points at an executable that exists here
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    binary = tmp_path / "qcloop-edge"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    unit = tmp_path / "qcloop-edge.service"
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} run --config /etc/qcloop-edge/config.toml" in text
    unit.write_text(text.replace(f"ExecStart={EXEC}", f"ExecStart={binary}"))
    # when verified
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # then not a word on stderr (unknown keys are only warnings with rc 0)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_the_unit_is_a_hardened_notify_service() -> None:
    settings = unit_settings()
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "qcloop-edge",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert int(settings["WatchdogSec"][0]) > 0


def test_a_camera_works_under_the_unit_and_a_missing_secrets_file_is_an_error() -> None:
    settings = unit_settings()
    # /dev/video* stays visible (PrivateDevices=yes would hide it), and only cameras are allowed
    assert settings["PrivateDevices"] == ["no"] and settings["DevicePolicy"] == ["closed"]
    assert settings["DeviceAllow"] == ["char-video4linux rw"]
    assert "video" in settings["SupplementaryGroups"][0].split()
    # no "-": systemd refuses to start the agent without its secrets instead of hiding it
    assert settings["EnvironmentFile"] == ["/etc/qcloop-edge/secrets.env"]


def test_the_docs_and_the_unit_name_the_same_config_paths() -> None:
    config = unit_settings()["ExecStart"][0].split("--config ")[1]
    secrets = unit_settings()["EnvironmentFile"][0]
    for doc in ("docs/edge.md", "docs/deploy.md"):
        text = (ROOT / doc).read_text()
        assert config in text and secrets in text, doc
        assert "/etc/qcloop/" not in text, doc  # the old paths of deploy.md


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real AF_UNIX datagram socket standing in for systemd's."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def test_notify_sends_datagrams_to_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(256) == b"READY=1"


def test_notify_supports_the_abstract_namespace() -> None:
    name = f"qcloop-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(256) == b"STOPPING=1"


def test_outside_systemd_notify_is_a_no_op(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_period_is_half_of_watchdog_usec(
    notify_socket: tuple[socket.socket, str],
) -> None:
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({}) is None
    sock, path = notify_socket
    watchdog = Watchdog({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    watchdog.tick()
    watchdog.tick()  # too soon: nothing sent
    assert sock.recv(256) == b"WATCHDOG=1"
    sock.settimeout(0.1)
    with pytest.raises(TimeoutError):
        sock.recv(256)


@pytest.mark.integration
def test_the_agent_reports_ready_watchdog_and_stopping(
    notify_socket: tuple[socket.socket, str], mqtt_url: str, yolo_onnx: Path, tmp_path: Path
) -> None:
    # given the agent as a process under a (simulated) systemd with a 1 s watchdog
    sock, path = notify_socket
    source = 'kind = "simulated"\ninterval_s = 0.1'
    config = write_toml(tmp_path, "cam-sd", mqtt_url, source=source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--model", str(yolo_onnx)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # when it starts and runs a while
        got = [sock.recv(256) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
    # then READY comes first, then watchdog pings; STOPPING at SIGTERM
    assert got[0] == b"READY=1" and got[1:] == [b"WATCHDOG=1"] * 2
    rest = []
    while (message := sock.recv(256)) != b"STOPPING=1":
        rest.append(message)
    assert set(rest) <= {b"WATCHDOG=1"}
    assert proc.wait(20) == 0

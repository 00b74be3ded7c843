"""Real server processes for tests: free loopback ports, and one way to start mosquitto.

Ports and the mosquitto binary are found as the product's embedded broker finds them
(``pipelines.broker``). The session broker (``mqtt_url``), the fault tests' own brokers
that are killed and restarted, and the chart's rendered broker config all start
mosquitto through :class:`MosquittoProcess`. A missing binary fails the test (CI counts a skip as a
failure); ``make test`` installs it first (``scripts/test-prerequisites.sh``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

import pytest

from pipelines.broker import free_port, listening, mosquitto_path

__all__ = ["MosquittoProcess", "Service", "free_port", "mosquitto_binary", "wait_port"]

MOSQUITTO_MISSING = (
    "mosquitto is not installed: `make test` installs it (scripts/test-prerequisites.sh), "
    "or apt-get install -y mosquitto"
)


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on 127.0.0.1:port."""
    if not listening(port, timeout):
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    """The mosquitto executable (Debian puts it in /usr/sbin, often off a user's PATH)."""
    exe = mosquitto_path()
    if exe is None:
        pytest.fail(MOSQUITTO_MISSING)
    return exe


class Service:
    """A real server process on a loopback port that a test can kill -9 and restart."""

    def __init__(self, name: str, command: list[str], log: Path | None = None) -> None:
        self.name = name
        self.command = command
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, port: int, timeout: float = 20.0) -> None:
        """Start it and wait until it listens on ``port``; its output goes to ``log``."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log is not None:
            self._log_file = out = self.log.open("ab")
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        wait_port(port, timeout)

    def kill(self) -> None:
        """SIGKILL, no goodbye (a crash or a pulled cable)."""
        self._end(graceful=False)

    def stop(self) -> None:
        """SIGTERM and wait: the orderly end of a test or a session."""
        self._end(graceful=True)

    def _end(self, graceful: bool) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class MosquittoProcess(Service):
    """A mosquitto on loopback whose ``url`` stays the same across restarts.

    Without ``config`` it is an open broker (anonymous, no persistence) on a free port;
    with ``config`` it runs that mosquitto.conf, which must listen on ``port``.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        config: str | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(
            config or f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        super().__init__("mosquitto", [mosquitto_binary(), "-c", str(conf)], log)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def up(self, timeout: float = 20.0) -> None:
        """Start (again) on the same port."""
        self.start(self.port, timeout)

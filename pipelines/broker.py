"""The embedded MQTT broker of the one-machine default.

``mosquitto`` when it is installed (a separate process, as in production),
otherwise amqtt in a background thread of this process (MQTT 3.1.1). Both bind
to loopback only. Any other broker is used by URL instead (``mqtt.url``).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from qcloop.errors import BrokerUnavailable


def listening(port: int, timeout: float) -> bool:
    """Whether something listens on 127.0.0.1:port within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def mosquitto_path() -> str | None:
    """Path of the mosquitto binary, if installed (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


class EmbeddedBroker:
    """A loopback MQTT broker; use as a context manager."""

    def __init__(self, port: int = 1883, prefer: str = "auto") -> None:
        self.port = port
        self.prefer = prefer
        self.kind = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        if port_in_use(self.port):
            raise BrokerUnavailable(
                f"port {self.port} on 127.0.0.1 is taken; stop what runs there or choose another "
                "port (--mqtt-port)"
            )
        exe = mosquitto_path()
        if exe and self.prefer in ("auto", "mosquitto"):
            self._start_mosquitto(exe)
        else:
            self._start_amqtt()
        if not listening(self.port, 15):
            self.stop()
            raise BrokerUnavailable(f"the embedded {self.kind} broker did not start on {self.url}")
        return self

    def _start_mosquitto(self, exe: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="qcloop-mosquitto-")
        conf = Path(self._tmp.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_packet_size 67108864\n"
        )
        self._proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.kind = "mosquitto"

    def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}}}

        async def serve() -> None:
            broker = Broker(config)
            await broker.start()
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            await broker.shutdown()

        self._thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
        self._thread.start()
        self.kind = "amqtt"

    def stop(self) -> None:
        """Stop the broker (idempotent)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

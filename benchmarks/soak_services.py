"""The soak's real services, each taken down and up on demand: mosquitto (killed and
restarted on its port), moto's S3 server, and a TCP relay in front of it that refuses
connections and cuts open ones while the store is "down" (moto keeps its objects only
while its process lives). Plus the /proc readings of the agent's resources."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pipelines.broker import free_port, listening, mosquitto_path


class ServerProcess:
    """A server process on a loopback port, its output in ``log`` (else discarded)."""

    def __init__(self, command: list[str], port: int, log: Path | None = None) -> None:
        self.command, self.port, self.log = command, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not running"
        return self.proc.pid

    def up(self, preexec_fn: Callable[[], None] | None = None) -> None:
        """Start it and wait until it listens (``RuntimeError`` with its log if it does not)."""
        out = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        if not listening(self.port, 30.0):
            said = self.log.read_text()[-2000:] if self.log is not None else ""
            raise RuntimeError(f"{self.command[0]} does not listen on {self.port}\n{said}")

    def down(self) -> None:
        """SIGKILL: no goodbye, as a crash or a pulled cable."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 10 s."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class Mosquitto(ServerProcess):
    """An open mosquitto (anonymous, no persistence) whose URL stays across restarts."""

    def __init__(self, folder: Path) -> None:
        exe = mosquitto_path()
        if exe is None:
            raise SystemExit("bench_soak: mosquitto is not installed (apt-get install mosquitto)")
        port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        super().__init__([exe, "-c", str(conf)], port)
        self.url = f"mqtt://127.0.0.1:{port}"


class MotoServer(ServerProcess):
    """moto's S3 server; stays up for the whole soak (its objects live in its memory)."""

    def __init__(self, log: Path | None = None) -> None:
        port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        super().__init__([str(exe), "-H", "127.0.0.1", "-p", str(port)], port, log)
        self.endpoint = f"http://127.0.0.1:{port}"


class Relay:
    """A TCP relay from its own loopback port to ``target``; down, it refuses connections
    and cuts the open ones (an S3 endpoint gone, as the agent sees it)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    return
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {src, dst}
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS); 0 if its /proc says none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist)."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # moved or deleted while we walk
                total += os.stat(os.path.join(base, name)).st_size
    return total

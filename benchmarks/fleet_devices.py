"""Many light edge devices in one process, for the fleet benchmark.

Each device is a paho client with its own MQTT user and password (its device id) and the
agent's own topics, will and heartbeat (``edge_agent.link``'s, ``qcloop.devices.DeviceState``).
A few ``Loop`` threads drive all the clients through one epoll selector each (paho's
external event loop), so a thousand devices cost a thousand sockets, not a thousand threads.

When the fleet's release arrives, a device does what the agent's loader does, with the
product's code: ``ReleaseGate.admit``/``accept`` (signature, fleet, expiry, sequence, written
to its own state dir), ``download_delay`` (the random wait before a download), ``fetch_model``
(the download capped at the signed size, sha256 checked, renamed into place) through its own
``LazyStore``, and then it reports ``serving`` on its state topic. It does not load the model
into onnxruntime: every box does that on its own CPU, at the same time, and it says nothing
about the broker or the store. A failed download is tried again as the loader does
(``edge_agent.fetch.download_retries``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import EdgeConfig
from edge_agent.fetch import download_delay, download_retries, fetch_model
from edge_agent.store import LazyStore
from edge_agent.trust import ReleaseGate
from qcloop.contracts import ModelRef
from qcloop.devices import STATE_FILTER, DeviceState, read_state
from qcloop.errors import QcloopError, StoreError
from qcloop.mqtt import client_id, device_release_topic, release_topic, state_topic
from qcloop.signing import SealedRelease

KEEPALIVE_S = 30  # as edge_agent.link


class Loop(threading.Thread):
    """One thread, one epoll selector, many paho clients (paho's external loop API)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full pipe already wakes the loop
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self.clients: list[mqtt.Client] = []
        self.stopping = False

    def attach(self, client: mqtt.Client) -> None:
        """Let this loop drive ``client`` (before it connects)."""
        client.on_socket_open = lambda c, _u, s: self.call(lambda: self._register(c, s))
        client.on_socket_close = lambda _c, _u, s: self.call(lambda: self._unregister(s))
        client.on_socket_register_write = lambda c, _u, s: self.call(lambda: self._writes(c, s, 1))
        client.on_socket_unregister_write = lambda c, _u, s: self.call(
            lambda: self._writes(c, s, 0)
        )
        self.clients.append(client)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this loop's thread, soon (thread-safe)."""
        if threading.current_thread() is self:
            fn()
            return
        with self._lock:
            self._calls.append(fn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this loop's thread after ``delay`` seconds."""
        self.call(
            lambda: heapq.heappush(self._timers, (time.monotonic() + delay, next(self._count), fn))
        )

    def _register(self, client: mqtt.Client, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.register(sock, selectors.EVENT_READ, client)

    def _unregister(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(sock)

    def _writes(self, client: mqtt.Client, sock: Any, on: int) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.modify(sock, events, client)

    def run(self) -> None:
        next_misc = time.monotonic() + 1.0
        while not self.stopping:
            timeout = 0.2
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
            for key, mask in self.selector.select(timeout):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(65536)
                    continue
                client: mqtt.Client = key.data
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
            with self._lock:
                calls, self._calls = self._calls, []
            for fn in calls:
                fn()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                heapq.heappop(self._timers)[2]()
            if now >= next_misc:
                for client in self.clients:
                    client.loop_misc()
                next_misc = now + 1.0


@dataclass
class Timeline:
    """When one device did what, in seconds of ``time.monotonic()``."""

    connected: float | None = None
    subscribed: float | None = None
    received: float | None = None
    download_at: float | None = None
    downloaded: float | None = None
    errors: list[str] = field(default_factory=list)


class Device:
    """One simulated box: its MQTT client, its release gate and store, its timeline."""

    def __init__(self, fleet: Fleet, config: EdgeConfig, loop: Loop, serving: ModelRef) -> None:
        self.fleet, self.config, self.loop = fleet, config, loop
        self.id = config.device_id
        self.gate = ReleaseGate(config)
        self.store = LazyStore(config.store, timeout_s=30.0)
        self.serving = serving
        self.status: Any = "serving"
        self.t = Timeline()
        self.connect_tries = 0
        self.disconnects = 0
        self.retries = download_retries(config)
        self.topic = release_topic(config.fleet)
        settings = config.mqtt
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id("qcloop-edge", self.id),
            protocol=mqtt.MQTTv311,
        )
        password = settings.password.get_secret_value() if settings.password else None
        self.client.username_pw_set(settings.username, password)
        offline = DeviceState(status="offline", device_id=self.id, fleet=config.fleet)
        self.client.will_set(state_topic(self.id), offline.model_dump_json(), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        loop.attach(self.client)

    def connect(self, again: bool = False) -> None:
        """Connect (a blocking TCP connect: on a pool thread, never on the loop's); a refused
        or timed-out connect is tried again after a growing, jittered wait."""
        self.connect_tries += 1
        settings = self.config.mqtt
        try:
            if again:
                self.client.reconnect()
            else:
                self.client.connect(settings.host, settings.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            self.t.errors.append(f"connect: {type(exc).__name__}")
            wait = min(30.0, 2.0 ** min(self.connect_tries, 5)) * random.uniform(0.5, 1.0)
            self.fleet.at(time.monotonic() + wait, lambda: self.connect(again))

    def heartbeat(self) -> None:
        """Publish this device's retained state (QoS 1), as the agent's heartbeat does."""
        state = DeviceState(
            status=self.status, device_id=self.id, fleet=self.config.fleet, model=self.serving
        )
        self.client.publish(state_topic(self.id), state.model_dump_json(), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.t.errors.append(f"connack: {reason}")
            return
        self.t.connected = self.t.connected or time.monotonic()
        client.subscribe([(self.topic, 1), (device_release_topic(self.id), 1)])
        self.heartbeat()

    def _on_subscribe(self, *_: Any) -> None:
        self.t.subscribed = self.t.subscribed or time.monotonic()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.loop.stopping or not reason.is_failure:
            return
        self.disconnects += 1
        self.fleet.at(time.monotonic() + random.uniform(1.0, 2.0), lambda: self.connect(True))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topic and message.payload:
            self.t.received = time.monotonic()
            self.fleet.work.submit(self._take, bytes(message.payload))

    def _take(self, payload: bytes) -> None:
        """The loader's steps on a worker thread: verify, record, wait, download, report."""
        try:
            sealed = self.gate.admit(payload, "fleet")
            self.gate.accept(sealed)
        except (QcloopError, OSError) as exc:
            self.t.errors.append(f"refused: {exc}")
            return
        if (sealed.message.model, self.status) == (self.serving, "serving"):
            return
        delay = download_delay(sealed.message, self.config, serving=True)
        self.fleet.at(time.monotonic() + delay, lambda: self._download(sealed))

    def _download(self, sealed: SealedRelease) -> None:
        release = sealed.message
        self.t.download_at = self.t.download_at or time.monotonic()
        try:
            path = fetch_model(release, self.config.model_dir, self.store)
        except StoreError as exc:
            self.t.errors.append(f"download: {type(exc).__name__}")
            self.store.reset()
            delay = self.retries.failed_jittered()
            self.fleet.at(time.monotonic() + delay, lambda: self._download(sealed))
            return
        except QcloopError as exc:
            self.t.errors.append(f"refused: {exc}")
            return
        self.t.downloaded = time.monotonic()
        path.unlink()  # a thousand copies need not stay on this one disk
        self.store.reset()  # a box keeps its connection; moto would keep a thread per box
        self.serving, self.status = release.model, "serving"
        self.loop.call(self.heartbeat)


class Fleet:
    """The devices, their loops, a scheduler for timed downloads and a pool that runs them."""

    def __init__(self, loops: int, download_threads: int) -> None:
        self.loops = [Loop(f"fleet-loop-{i}") for i in range(loops)]
        self.devices: list[Device] = []
        self.work = ThreadPoolExecutor(download_threads, thread_name_prefix="fleet-dl")
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._timer = threading.Thread(target=self._schedule, name="fleet-timer", daemon=True)

    def add(self, config: EdgeConfig, serving: ModelRef) -> Device:
        device = Device(self, config, self.loops[len(self.devices) % len(self.loops)], serving)
        self.devices.append(device)
        return device

    def start(self, heartbeat_s: float) -> None:
        """Start the loops, connect every device at once, heartbeats spread over the period."""
        for loop in self.loops:
            loop.start()
        self._timer.start()
        for device in self.devices:
            self.work.submit(device.connect)
            first = random.uniform(0.0, heartbeat_s)
            device.loop.later(first, lambda d=device: self._beat(d, heartbeat_s))

    def _beat(self, device: Device, period: float) -> None:
        if device.client.is_connected():
            device.heartbeat()
        device.loop.later(period, lambda: self._beat(device, period))

    def at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the pool at monotonic time ``when``."""
        with self._cond:
            heapq.heappush(self._due, (when, next(self._count), fn))
            self._cond.notify()

    def _schedule(self) -> None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    self.work.submit(heapq.heappop(self._due)[2])
                wait = self._due[0][0] - now if self._due else 1.0
                self._cond.wait(min(1.0, wait))

    def stop(self) -> None:
        for loop in self.loops:
            loop.stopping = True
        for device in self.devices:
            device.loop.call(device.client.disconnect)
        time.sleep(0.5)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self.work.shutdown(wait=False, cancel_futures=True)
        for loop in self.loops:
            loop.join(5)


class Observer:
    """The bridge's view, in a process of its own (as the bridge runs): every device state it
    receives (QoS 1, as ``qcloop.devices.fleet_states``), one line each in ``path``."""

    def __init__(self, port: int, user: str, password: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fleet_devices", str(port), user, str(path)],
            env={**os.environ, "OBSERVER_PASSWORD": password},
        )
        deadline = time.monotonic() + 30
        while not (path.exists() and path.read_text().startswith("subscribed")):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the observer did not subscribe")
            time.sleep(0.05)
        self._offset = 0
        self.messages = 0
        self.serving: dict[str, dict[str, float]] = {}  # version -> device -> first seen

    def poll(self) -> None:
        """Read what arrived since the last poll."""
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode().splitlines():
            if line.startswith("subscribed"):
                continue
            when, device, status, version = line.split(" ")
            self.messages += 1
            if status == "serving":
                self.serving.setdefault(version, {}).setdefault(device, float(when))

    def count(self, version: str) -> int:
        self.poll()
        return len(self.serving.get(version, {}))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def observe(port: int, user: str, path: Path) -> None:
    """The observer process: subscribe to every state, append ``when device status version``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait, in every thread
    out = open(path, "w", buffering=1)  # noqa: SIM115 - open for the process's life
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        when = time.monotonic()
        device = message.topic.split("/")[2]
        state = read_state(device, bytes(message.payload))
        version = (state.get("model") or {}).get("version") or "-"
        out.write(f"{when:.4f} {device} {state['status']} {version}\n")

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-bridge-{os.getpid()}")
    client.username_pw_set(user, os.environ["OBSERVER_PASSWORD"])
    client.on_connect = lambda c, *_: c.subscribe(STATE_FILTER, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=KEEPALIVE_S)
    client.loop_start()
    subscribed.wait(30)
    out.write("subscribed\n")
    signal.sigwait({signal.SIGTERM})
    client.disconnect()
    client.loop_stop()


def device_config(
    device_id: str, fleet: str, root: Path, mqtt_url: str, password: str, **settings: Any
) -> EdgeConfig:
    """A device's config: its own MQTT user, folders under ``root``, the rest ``settings``."""
    folder = root / device_id
    return EdgeConfig.model_validate(
        {
            "device_id": device_id,
            "fleet": fleet,
            "model_dir": folder / "models",
            "state_dir": folder / "state",
            "source": {"kind": "simulated"},
            "mqtt": {"url": mqtt_url, "username": device_id, "password": password},
            **settings,
        }
    )


if __name__ == "__main__":
    observe(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))

"""Fleet at scale: how long a release takes to reach 100, 300, 1,000 devices, and what it costs.

    .venv/bin/python -m benchmarks.bench_fleet [--devices 100 300 1000] [--jitter 0 8 30]
        [--model-mb 3.5] [--presigned] [--heartbeat 10] [--broker-conf LINE ...]
        [--broker-nofile N] [--out DIR]

For each fleet size: a real mosquitto with the chart's ACL and one password per device
(``benchmarks.fleet_services``), moto's S3 server holding the models, and that many
simulated devices in this process (``benchmarks.fleet_devices``: each its own MQTT user,
heartbeat, release gate, store client, random wait and capped, hashed download). All
devices connect at once (the connect storm), heartbeat idle for ``--idle`` s (the baseline:
the broker holding the fleet), then for each ``--jitter`` W the bridge publishes a new model
with the product's ``claim_sequence`` and ``publish_release`` (``benchmarks.fleet_bridge``,
a process of its own) and every device takes it. W = 0 is the agent before the random wait.

Measured from the bridge's first step to each device's ``serving`` state seen by a client
with the bridge's MQTT user in a process of its own (as the bridge sees the fleet): p50,
p95 and max; when the devices got the message; the broker's CPU (share of one core over
the window), peak RSS and open files from /proc; the store's requests (moto's request log)
and CPU; this process's CPU (the devices' own work, which boxes do each on their own CPU);
the bridge's own read of the fleet (``fleet_states``). ``--broker-conf`` and
``--broker-nofile`` try the broker's limits. The table on stdout, every figure in
``OUT/fleet.json``, the broker's log beside it.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.fleet_devices import Fleet, Observer, device_config
from benchmarks.fleet_services import (
    BRIDGE_USER,
    Broker,
    Moto,
    chart_broker_config,
    find_helm,
    new_password,
    raise_fd_limit,
    sample,
)
from components.release import (
    model_key,
)
from qcloop.contracts import ModelRef
from qcloop.settings import StoreSettings
from qcloop.signing import generate_keypair
from qcloop.storage import open_store, sha256_bytes

FLEET = "line-1"
MODEL = "qcloop-detector"
MB = 1_000_000
STORE_KEYS = ("qcloop-bridge", "bench-only-secret")  # moto takes any


@dataclass
class Services:
    """What every fleet size shares: the store, the keys, the models."""

    moto: Moto
    store: StoreSettings
    key_file: Path
    public_key: Path
    models: dict[str, bytes]
    released: int = 1  # every fleet starts serving version 1

    def next_version(self) -> str:
        self.released += 1
        return str(self.released)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--devices", type=int, nargs="+", default=[100, 300, 1000], help="fleet sizes")
    add("--jitter", type=float, nargs="+", default=[0.0, 8.0, 30.0], help="download_jitter_s runs")
    add("--model-mb", type=float, default=3.5, help="model size (YOLOv8n INT8 ~3.5, FP32 ~12)")
    add("--presigned", action="store_true", help="presigned URLs: devices hold no store keys")
    add("--heartbeat", type=float, default=10.0, help="state_interval_s of every device")
    add("--idle", type=float, default=5.0, help="seconds of heartbeats measured before releasing")
    add("--timeout", type=float, default=180.0, help="give up on a release after this")
    add("--loops", type=int, default=4, help="threads driving the MQTT clients")
    add("--download-threads", type=int, default=128, help="downloads at once in this process")
    add("--retry", type=float, default=2.0, help="release.retry_s: first retry of a download")
    add("--broker-nofile", type=int, default=None, help="the broker's RLIMIT_NOFILE (e.g. 1024)")
    add(
        "--broker-conf",
        nargs="*",
        default=[],
        help='lines added to mosquitto.conf, e.g. "max_queued_messages 10000"',
    )
    add("--helm", type=Path, default=None, help="helm binary (default: .qcloop/bin/helm)")
    add("--out", type=Path, default=Path(".qcloop/bench/fleet"), help="fleet.json goes here")
    return parser.parse_args(argv)


def setup(work: Path, args: argparse.Namespace) -> Services:
    moto = Moto(work / "moto")
    store = StoreSettings(
        kind="s3",
        endpoint=moto.endpoint,
        bucket="qcloop",
        access_key=STORE_KEYS[0],
        secret_key=STORE_KEYS[1],
        region="us-east-1",
    )
    key_file, public_key = generate_keypair(work / "keys")
    size = int(args.model_mb * MB)
    count = 1 + len(args.devices) * len(args.jitter)
    models = {str(v): os.urandom(size) for v in range(1, count + 1)}
    bucket = open_store(store)
    for version, data in models.items():
        bucket.put_bytes(model_key(MODEL, version), data, "application/octet-stream")
    return Services(moto, store, key_file, public_key, models)


def bridge(do: str, services: Services, broker: Broker, password: str, **job: Any) -> Any:
    """Run one step of the bridge in its own process (``benchmarks.fleet_bridge``)."""
    store = services.store
    job |= {
        "do": do,
        "fleet": FLEET,
        "mqtt_url": broker.url,
        "user": BRIDGE_USER,
        "password": password,
        "key_file": str(services.key_file),
        "store": {
            **store.model_dump(mode="json", exclude={"access_key", "secret_key"}),
            "access_key": STORE_KEYS[0],
            "secret_key": STORE_KEYS[1],
        },
    }
    command = [sys.executable, "-m", "benchmarks.fleet_bridge"]
    out = subprocess.run(
        command, input=json.dumps(job), capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


class Sampler:
    """/proc of the broker and the store every 0.2 s: peak RSS and open files."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_rss: Counter[str] = Counter()
        self.peak_fds: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            got = sample(pid)
            self.peak_rss[name] = max(self.peak_rss[name], got.rss_bytes)
            self.peak_fds[name] = max(self.peak_fds[name], got.fds)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process and of this one (the devices)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **{n: sample(p).cpu_s for n, p in pids.items()},
        "devices": usage.ru_utime + usage.ru_stime,
    }


def window(
    pids: dict[str, int], moto: Moto
) -> tuple[float, dict[str, float], Counter[str], Sampler]:
    return time.monotonic(), cpu_now(pids), moto.requests(), Sampler(pids)


def close_window(
    opened: tuple[float, dict[str, float], Counter[str], Sampler], pids: dict[str, int], moto: Moto
) -> dict[str, Any]:
    """CPU share of one core, peak RSS (MB) and open files, and store requests since ``opened``."""
    started, cpu0, requests0, sampler = opened
    sampler.stop()
    elapsed = time.monotonic() - started
    cpu1 = cpu_now(pids)
    requests = moto.requests() - requests0
    return {
        "window_s": round(elapsed, 2),
        "cpu_pct": {n: round(100 * (cpu1[n] - cpu0[n]) / elapsed, 1) for n in cpu1},
        "rss_mb": {n: round(v / 2**20, 1) for n, v in sampler.peak_rss.items()},
        "fds": dict(sampler.peak_fds),
        "store_requests": dict(sorted(requests.items())),
    }


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "max": round(ordered[-1], 2),
    }


@dataclass
class Run:
    """One fleet size: its broker, the bridge's password, the observer, the devices."""

    services: Services
    broker: Broker
    password: str
    observer: Observer
    fleet: Fleet
    presigned: bool

    @property
    def pids(self) -> dict[str, int]:
        return {"broker": self.broker.pid, "store": self.services.moto.pid}

    def release(self, version: str) -> dict[str, Any]:
        """The bridge publishes model ``version``: when it began and how long it took."""
        data = self.services.models[version]
        return bridge(
            "release",
            self.services,
            self.broker,
            self.password,
            version=version,
            size=len(data),
            sha256=sha256_bytes(data),
            presigned=self.presigned,
        )


def run_size(n: int, services: Services, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One fleet of ``n`` devices: connect storm, idle baseline, one release per jitter."""
    folder = work / f"fleet-{n}"
    devices = {f"dev-{i:05d}": new_password() for i in range(n)}
    password = new_password()
    config = chart_broker_config(find_helm(args.helm), FLEET, list(devices), folder)
    users = {BRIDGE_USER: password, **devices}
    broker = Broker(folder / "broker", config, users, args.broker_conf)
    broker.up(args.broker_nofile)
    observer = Observer(broker.port, BRIDGE_USER, password, folder / "states.log")
    fleet = Fleet(args.loops, args.download_threads)
    run = Run(services, broker, password, observer, fleet, args.presigned)
    store = (
        {"kind": "local"}
        if args.presigned
        else {
            **services.store.model_dump(mode="json", exclude={"access_key", "secret_key"}),
            "access_key": "qcloop-edge",  # moto takes any; MinIO: the chart's edge user
            "secret_key": "bench-only-secret",
        }
    )
    release_settings = {"public_key": services.public_key, "retry_s": args.retry}
    for device_id, device_password in devices.items():
        config = device_config(
            device_id,
            FLEET,
            folder / "devices",
            broker.url,
            device_password,
            store=store,
            release=release_settings,
            state_interval_s=args.heartbeat,
        )
        fleet.add(config, ModelRef(name=MODEL, version="1"))
    result: dict[str, Any] = {"devices": n}
    try:
        result["initial_release"] = run.release("1")  # retained as they connect: they serve it
        result["connect"] = connect_storm(run, n, args.heartbeat, args.timeout)
        result["idle"] = idle(run, n, args.idle)
        result["releases"] = [one_release(run, n, jitter, args) for jitter in args.jitter]
        result["disconnects"] = sum(d.disconnects for d in fleet.devices)
    finally:
        fleet.stop()
        observer.close()
        broker.down()
        shutil.copy(broker.log, args.out / f"mosquitto-{n}.log")
    return result


def connect_storm(run: Run, n: int, heartbeat: float, timeout: float) -> dict[str, Any]:
    """Every device connects at once; until all subscribed to their release topics."""
    opened = window(run.pids, run.services.moto)
    started = time.monotonic()
    run.fleet.start(heartbeat)
    devices = run.fleet.devices
    while time.monotonic() < started + timeout and sum(bool(d.t.subscribed) for d in devices) < n:
        time.sleep(0.05)
    subscribed = [d.t.subscribed - started for d in devices if d.t.subscribed]
    return {
        "subscribed": len(subscribed),
        "all_s": round(max(subscribed), 2) if len(subscribed) == n else None,
        **quantiles(subscribed),
        "tcp_tries": sum(d.connect_tries for d in devices),
        "errors": dict(Counter(e for d in devices for e in d.t.errors)),
        **close_window(opened, run.pids, run.services.moto),
    }


def idle(run: Run, n: int, seconds: float) -> dict[str, Any]:
    """The broker holding the fleet, heartbeats only; then the bridge reads the fleet."""
    run.observer.poll()
    messages = run.observer.messages
    opened = window(run.pids, run.services.moto)
    time.sleep(seconds)
    figures = close_window(opened, run.pids, run.services.moto)
    run.observer.poll()
    figures["states_per_s"] = round((run.observer.messages - messages) / figures["window_s"], 1)
    figures["rss_mb_now"] = round(sample(run.broker.pid).rss_bytes / 2**20, 1)
    figures["bridge_read"] = bridge("read", run.services, run.broker, run.password, devices=n)
    return figures


def one_release(run: Run, n: int, jitter: float, args: argparse.Namespace) -> dict[str, Any]:
    """Publish the next model with ``download_jitter_s = jitter``; measure until all serve."""
    version = run.services.next_version()
    devices = run.fleet.devices
    for device in devices:
        release_config = device.config.release.model_copy(update={"download_jitter_s": jitter})
        device.config = device.config.model_copy(update={"release": release_config})
        device.t.received = device.t.download_at = device.t.downloaded = None
        device.t.errors.clear()
    opened = window(run.pids, run.services.moto)
    published = run.release(version)
    t0 = published.get("t0", time.monotonic())
    while time.monotonic() < t0 + args.timeout and run.observer.count(version) < n:
        if "error" in published:
            break
        time.sleep(0.05)
    figures = close_window(opened, run.pids, run.services.moto)
    seen = [t - t0 for t in run.observer.serving.get(version, {}).values()]
    done = [d for d in devices if d.t.downloaded and d.t.download_at]
    return {
        "jitter_s": jitter,
        "version": version,
        "bridge": published,
        "serving": len(seen),
        "serving_s": quantiles(seen),
        "received_s": quantiles([d.t.received - t0 for d in devices if d.t.received]),
        "download_at_s": quantiles([d.t.download_at - t0 for d in devices if d.t.download_at]),
        "download_s": quantiles([d.t.downloaded - d.t.download_at for d in done]),
        "store_mb": round(len(done) * args.model_mb, 1),
        "device_errors": dict(Counter(e.split(":")[0] for d in devices for e in d.t.errors)),
        **figures,
    }


BASELINE = (
    "| devices | connect storm: all subscribed s (p50) | TCP tries | broker CPU % storm / idle "
    "| broker RSS MB idle | broker fds | states/s | bridge read: devices in s | all retained s |"
)
RELEASE = (
    "| devices | jitter s | serving | p50 | p95 | max | bridge s | received max "
    "| download p50 / max | store GETs | failed | broker CPU % / RSS MB "
    "| store CPU % / RSS MB | devices CPU % |"
)


def print_table(report: dict[str, Any]) -> None:
    how = "presigned http URLs" if report["presigned"] else "s3:// with each device's store keys"
    print(
        f"\nfleet benchmark: {report['model_mb']} MB model, {how}, heartbeat every "
        f"{report['heartbeat_s']:g} s, {report['cores']} cores, RLIMIT_NOFILE {report['nofile']}"
    )
    print("\nbaseline: the broker holding the fleet, idle but for heartbeats")
    print(BASELINE)
    print("|" + " --- |" * BASELINE.count(" |"))
    for r in report["sizes"]:
        c, i, b = r["connect"], r["idle"], r["idle"]["bridge_read"]
        print(
            f"| {r['devices']} | {c['all_s']} ({c['p50']}) | {c['tcp_tries']} | "
            f"{c['cpu_pct']['broker']} / {i['cpu_pct']['broker']} | {i['rss_mb_now']} | "
            f"{i['fds'].get('broker')} | {i['states_per_s']} | {b['devices']} in {b['s']} | "
            f"{b['all_retained_s']} |"
        )
    print("\nrelease -> serving: seconds from the bridge's first step to each device's state")
    print(RELEASE)
    print("|" + " --- |" * RELEASE.count(" |"))
    for r in report["sizes"]:
        for rel in r["releases"]:
            s, cpu, rss, dl = rel["serving_s"], rel["cpu_pct"], rel["rss_mb"], rel["download_s"]
            requests = rel["store_requests"]
            gets = sum(v for k, v in requests.items() if k.startswith("GET 2"))
            failed = sum(v for k, v in requests.items() if k.split()[1][0] in "35")
            failed += sum(rel["device_errors"].values())
            print(
                f"| {r['devices']} | {rel['jitter_s']:g} | {rel['serving']}/{r['devices']} | "
                f"{s['p50']} | {s['p95']} | {s['max']} | "
                f"{rel['bridge'].get('bridge_s', 'failed')} | {rel['received_s']['max']} | "
                f"{dl['p50']} / {dl['max']} | {gets} | {failed} | "
                f"{cpu['broker']} / {rss.get('broker')} | {cpu['store']} / {rss.get('store')} | "
                f"{cpu['devices']} |"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID`: every thread's stack, on stderr
    nofile = raise_fd_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qcloop-bench-fleet-") as tmp:
        work = Path(tmp)
        services = setup(work, args)
        try:
            sizes = [run_size(n, services, args, work) for n in args.devices]
        finally:
            services.moto.down()
    report = {
        "model_mb": args.model_mb,
        "presigned": args.presigned,
        "heartbeat_s": args.heartbeat,
        "nofile": nofile,
        "broker_nofile": args.broker_nofile,
        "broker_conf": args.broker_conf,
        "cores": os.cpu_count(),
        "sizes": sizes,
    }
    (args.out / "fleet.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\n{args.out / 'fleet.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fleet benchmark's real services: mosquitto with the chart's own ACL and a password per
device, moto's S3 server whose request log is counted, and /proc readings of a process.

The broker config is the chart's (`helm template --show-only` of the mosquitto ConfigMap,
with the benchmark's fleet in `mosquitto.fleets`), run on a loopback port without
persistence, as tests/charts/test_mosquitto_acl.py runs it; the passwords are hashed by
`mosquitto_passwd -U`, as the chart's init container hashes its Secrets.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import secrets
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.soak_services import MotoServer, ServerProcess, rss_bytes
from pipelines.broker import free_port, mosquitto_path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "qcloop"
BRIDGE_USER = "qcloop"
REQUIRED_VALUES = ROOT / "tests" / "charts" / "values-required.yaml"  # test-only secrets
_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def find_helm(given: Path | None) -> Path:
    """``given``, else `.qcloop/bin/helm` (``make test`` installs it), else helm on PATH."""
    for candidate in (given, ROOT / ".qcloop" / "bin" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("bench_fleet: no helm; `bash scripts/install-helm.sh .qcloop/bin` installs it")


def chart_broker_config(helm: Path, fleet: str, devices: list[str], folder: Path) -> dict[str, str]:
    """The chart's mosquitto.conf and ACL for one fleet of ``devices`` (the chart's required
    values as the chart tests give them, ``REQUIRED_VALUES``, plus the fleet)."""
    values = {
        "mosquitto": {
            "auth": {"devices": {"existingSecret": "bench-devices"}},
            "fleets": {fleet: devices},
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    values_file = folder / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    command = [str(helm), "template", "bench", str(CHART), "--values", str(REQUIRED_VALUES)]
    command += ["--values", str(values_file)]
    command += ["--show-only", "templates/mosquitto/configmap.yaml"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"bench_fleet: helm template failed: {out.stderr[-2000:]}")
    data = yaml.safe_load(out.stdout)["data"]
    return {"conf": data["mosquitto.conf"], "acl": data["acl"]}


@dataclass
class ProcSample:
    """CPU seconds (user + system), resident memory and open files of a process."""

    cpu_s: float
    rss_bytes: int
    fds: int


def sample(pid: int) -> ProcSample:
    """Read ``pid``'s /proc: CPU time, VmRSS, open file descriptors."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return ProcSample(cpu, rss_bytes(pid), fds)


class Broker(ServerProcess):
    """mosquitto with the chart's config and ACL, one password per device and the bridge's."""

    def __init__(
        self, folder: Path, config: dict[str, str], users: dict[str, str], extra: list[str]
    ) -> None:
        exe = mosquitto_path()
        if exe is None:
            raise SystemExit("bench_fleet: mosquitto is not installed (apt-get install mosquitto)")
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        passwd, acl = folder / "passwd", folder / "acl"
        passwd.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
        hashed = subprocess.run(
            ["mosquitto_passwd", "-U", str(passwd)], capture_output=True, text=True, timeout=600
        )
        if hashed.returncode != 0:
            raise SystemExit(f"bench_fleet: mosquitto_passwd -U failed: {hashed.stderr}")
        acl.write_text(config["acl"])
        log = folder / "mosquitto.log"  # mosquitto writes it (log_dest file)
        conf = folder / "mosquitto.conf"
        local = _local(config["conf"], port, passwd, acl, log)
        conf.write_text(local + "".join(f"{x}\n" for x in extra))
        super().__init__([exe, "-c", str(conf)], port, log)
        self.url = f"mqtt://127.0.0.1:{port}"

    def up(self, nofile: int | None = None) -> None:  # type: ignore[override]
        """Start it; with ``nofile``, under that RLIMIT_NOFILE (a box's default is 1024)."""

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        super().up(limit if nofile else None)

    def down(self) -> None:
        self.stop()


def _local(conf: str, port: int, passwd: Path, acl: Path, log: Path) -> str:
    """The chart's mosquitto.conf for a loopback port, these files, no persistence."""
    lines = []
    for line in conf.splitlines():
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        if line.startswith(("persistence", "autosave_interval", "log_dest", "log_type")):
            continue
        line = line.replace("/mosquitto/passwd/passwd", str(passwd))
        lines.append(line.replace("/mosquitto/config/acl", str(acl)))
    lines += [f"log_dest file {log}", "log_type error", "log_type warning"]
    lines += ["log_type notice", "connection_messages false"]
    lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")  # root would switch users
    return "\n".join(lines) + "\n"


_REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) \S+ HTTP/[\d.]+" (\d{3})')


class Moto(MotoServer):
    """moto's S3 server in its own process, up at once; every request it answers is in
    its log."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(folder / "moto.log")
        self.up()

    def requests(self) -> Counter[str]:
        """Requests answered so far, by ``METHOD status``."""
        assert self.log is not None
        return Counter(f"{m} {s}" for m, s in _REQUEST.findall(self.log.read_text()))

    def down(self) -> None:
        self.stop()


def new_password() -> str:
    """A device's MQTT password."""
    return secrets.token_urlsafe(12)

"""How many cores this process may use: training's torch threads, the edge's onnxruntime ones."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_threads(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    A Kubernetes CPU limit (or a systemd ``CPUQuota=``) is such a quota (``cpu.max``
    "200000 100000" is 2 CPUs); a fractional one rounds down, to at least 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)

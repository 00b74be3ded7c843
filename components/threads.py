"""How many cores training may use: torch threads on the CPU, data loaders on a GPU."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def loader_workers(device: str, parallel: int = 1) -> int:
    """Data-loading processes for a training device: none on the CPU, up to 8 on GPUs,
    and with ``parallel`` trainings at once each one's share of the cores (at least 1).

    On the CPU the augmentation would take cores from the training itself; on a GPU
    the main process alone cannot feed it mosaics fast enough.
    """
    if str(device).strip().lower() in ("cpu", ""):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // parallel))


def cpu_threads(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    A Kubernetes CPU limit is such a quota (``cpu.max`` "200000 100000" is 2 CPUs);
    a fractional one rounds down, to at least 1.
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


def shared_cpu_threads(parallel: int) -> int:
    """Torch threads of each of ``parallel`` CPU trainings at once: its share of
    ``cpu_threads``, at least 1."""
    return max(1, cpu_threads() // parallel)


def use_cpu_threads(trainer: Any, threads: int) -> None:
    """Training callback (``on_pretrain_routine_start``): CPU training on ``threads`` threads.

    Ultralytics trains on the CPU with one core fewer than the machine has, kept for
    data-loading processes, yet on the CPU it loads the data in the training process
    itself (workers 0): on a 2-core box training ran on one core
    (docs/performance.md "Training time").
    """
    if trainer.device.type != "cpu":
        return
    import torch

    torch.set_num_threads(threads)
    log.info("cpu: %d threads", threads)

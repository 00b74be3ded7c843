"""How many cores training may use: torch threads on the CPU, data loaders on a GPU."""

from __future__ import annotations

import logging
import os
from typing import Any

from qcloop.cores import cpu_threads

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

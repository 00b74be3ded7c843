"""How many cores training may use: CPU threads and GPU data loaders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [
        ("max 100000\n", None),  # no quota: the affinity
        ("200000 100000\n", 2),  # a Kubernetes limit of 2 CPUs
        ("150000 100000\n", 1),  # 1.5 CPUs rounds down
        ("20000 100000\n", 1),  # at least one thread
        (None, None),  # no cgroup v2 file: the affinity
        ("garbage\n", None),
    ],
)
def test_cpu_threads_is_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str | None, cap: int | None
) -> None:
    from components.threads import cpu_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert cpu_threads(path) == (8 if cap is None else cap)


def test_loader_workers_only_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.threads import loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert (loader_workers("cpu"), loader_workers("CPU"), loader_workers("")) == (0, 0, 0)
    assert loader_workers("0") == loader_workers("cuda:0") == loader_workers("0,1") == 8
    assert (loader_workers("0", 6), loader_workers("0", 40), loader_workers("cpu", 2)) == (2, 1, 0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers("0") == 2

"""How many CPU threads a run may use: the cores this process may actually run on, not the machine's.

`os.cpu_count()` (and torch's default) counts every core of the machine, also where a container's
CPU quota, `taskset` or SLURM's cgroup leaves a process a fraction of them; a run with more threads
than cores oversubscribes them, and on a busy machine one epoch can take 20x longer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Beyond this many threads the small models of a benchmark run stop getting faster on a CPU, and a
# shared machine loses more than the run gains.
MAX_DEFAULT_THREADS = 8


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity, lowered to the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def default_threads(jobs: int = 1) -> int:
    """Threads for each of `jobs` runs sharing this process's cores (num_threads=0)."""
    return max(1, min(MAX_DEFAULT_THREADS, available_cpus() // max(1, jobs)))

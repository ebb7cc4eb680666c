"""Backends that execute many runs, each through the same worker (`scheduler/worker.py`):

- `local`: a process pool over this machine's GPUs or CPU cores (`local.py`);
- `slurm`: a SLURM job array submitted with submitit (`slurm.py`, extra `slurm`);
- `ray`: tasks on a Ray cluster (`ray_cluster.py`, extra `ray`).

Every backend takes the expanded run configs, skips finished runs, and returns a SweepSummary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mmbench.config import RunConfig

BACKENDS = ("local", "slurm", "ray")


@dataclass
class SweepSummary:
    total: int
    done: int = 0
    skipped: int = 0
    failed: list[tuple[RunConfig, str, Path]] = field(default_factory=list)
    interrupted: bool = False
    durations: list[float] = field(default_factory=list)
    detached: bool = False  # submitted to a cluster; collect by running the same command again


@dataclass
class Running:
    """What a live display shows for one running run."""

    cfg: RunConfig
    where: str
    started: float


Tick = Callable[[SweepSummary, list[Running]], None]
Event = Callable[[str], None]


class Backend(Protocol):
    def run(self, configs: list[RunConfig], on_tick: Tick | None = None) -> SweepSummary: ...


def label(cfg: RunConfig) -> str:
    return f"{cfg.method} {cfg.dataset} seed {cfg.seed} ({cfg.run_id})"


def missing_extra(package: str, extra: str) -> ImportError:
    return ImportError(f"the {extra} backend needs the `{package}` package: pip install 'mmbench[{extra}]'")



"""The runs of a command in waves (mmbench/train/dependencies.py): each wave through a backend once the one
before has ended, the runs whose required runs did not finish recorded as failed instead of handed over."""

from __future__ import annotations

from pathlib import Path

from mmbench.config import RunConfig
from mmbench.scheduler import Backend, SweepSummary, Tick
from mmbench.scheduler.worker import log_path
from mmbench.train.dependencies import blocked, record_blocked


def run_waves(backend: Backend, waves: list[list[RunConfig]], out: Path,
              on_tick: Tick | None = None) -> tuple[SweepSummary, int]:
    """The summary of everything, and how many runs of later waves were not handed over: it stops after a
    wave that did not end here (SLURM --no-wait with runs still queued, Ctrl-C)."""
    total = SweepSummary(total=sum(len(wave) for wave in waves))
    for index, wave in enumerate(waves):
        ready = []
        for cfg in wave:
            reason = blocked(cfg, out)
            if reason is None:
                ready.append(cfg)
            else:
                record_blocked(out, cfg, reason)
                total.failed.append((cfg, f"not started: {reason}", log_path(out, cfg)))
        summary = backend.run(ready, on_tick=on_tick)
        total.done += summary.done
        total.skipped += summary.skipped
        total.failed += summary.failed
        total.durations += summary.durations
        total.interrupted = summary.interrupted
        pending = summary.total - summary.done - summary.skipped - len(summary.failed)
        total.detached = summary.detached and pending > 0
        if total.detached or summary.interrupted:
            return total, sum(len(later) for later in waves[index + 1:])
    return total, 0

"""The Ray backend: one Ray task per run, on an existing cluster (`address`) or a local one.

A task asks for 1/`runs_per_gpu` of a GPU when the cluster has GPUs (fractions pack several
runs on one GPU; Ray sets CUDA_VISIBLE_DEVICES) and `cpus_per_run` CPUs, and starts the same worker process as the local
backend, so crash isolation, the run lock and checkpoints behave the same. The results folder
must be on storage every node sees. Ctrl-C cancels the tasks; finished runs are kept.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from mmbench.config import RunConfig
from mmbench.results import is_done, run_paths
from mmbench.scheduler import Event, Running, SweepSummary, Tick, label, missing_extra
from mmbench.scheduler.worker import (
    DONE_ELSEWHERE,
    LOCKED_ELSEWHERE,
    describe_exit,
    log_path,
    record_failure,
    run_worker,
    write_spec,
)


def ray_worker(spec: str, out: str, log: str) -> tuple[int, str]:
    """Runs inside a Ray worker: (exit status of the run's worker process, node it ran on)."""
    import os

    node = os.uname().nodename
    header = f"attempt in a Ray task on {node}"
    return run_worker(Path(spec), Path(out), Path(log), header=header), node


class RayScheduler:
    def __init__(self, out: Path, runs_per_gpu: int = 1, cpus_per_run: int = 1, address: str | None = None,
                 retries: int = 0, plugins: list[str] | None = None, on_event: Event | None = None,
                 init_kwargs: dict[str, Any] | None = None, poll_s: float = 1.0) -> None:
        self.out, self.retries = Path(out).resolve(), retries
        self.runs_per_gpu, self.cpus_per_run, self.address = runs_per_gpu, cpus_per_run, address
        self.plugins = list(plugins or [])
        self.on_event = on_event or (lambda message: None)
        self.init_kwargs, self.poll_s = dict(init_kwargs or {}), poll_s

    def run(self, configs: list[RunConfig], on_tick: Tick | None = None) -> SweepSummary:
        try:
            import ray
        except ImportError:
            raise missing_extra("ray", "ray") from None
        summary = SweepSummary(total=len(configs))
        todo = [cfg for cfg in configs if not is_done(run_paths(self.out, cfg))]
        summary.skipped = len(configs) - len(todo)
        if not todo:
            return summary
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_kwargs)
        resources = ray.cluster_resources()
        gpus_per_run = 1 / self.runs_per_gpu if resources.get("GPU", 0) > 0 else 0
        task = ray.remote(ray_worker).options(num_gpus=gpus_per_run, num_cpus=self.cpus_per_run, max_retries=0)
        self.on_event(f"Ray cluster with {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs; "
                      f"{gpus_per_run:g} GPU and {self.cpus_per_run} CPU per run")
        pending: dict[Any, tuple[RunConfig, float]] = {}
        attempts: dict[str, int] = {}
        try:
            for cfg in todo:
                pending[self._submit(task, cfg)] = (cfg, time.time())
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    cfg, started = pending.pop(ref)
                    again = self._settle(ray, ref, cfg, started, attempts, summary)
                    if again is not None:
                        pending[self._submit(task, again)] = (again, time.time())
                if on_tick:
                    on_tick(summary, [Running(cfg, "Ray", started) for cfg, started in pending.values()])
        except KeyboardInterrupt:
            summary.interrupted = True
            for ref in pending:
                ray.cancel(ref, force=True)
        finally:
            if started_here:
                ray.shutdown()
        return summary

    def _submit(self, task: Any, cfg: RunConfig) -> Any:
        if cfg.num_threads == 0:  # the run's threads are its CPUs, not the node's
            cfg = dataclasses.replace(cfg, num_threads=max(1, int(self.cpus_per_run)))
        spec = write_spec(self.out, cfg, self.plugins)
        return task.remote(str(spec), str(self.out), str(log_path(self.out, cfg)))

    def _settle(self, ray: Any, ref: Any, cfg: RunConfig, started: float, attempts: dict[str, int],
                summary: SweepSummary) -> RunConfig | None:
        """Count a finished task; returns the config when it should run again."""
        try:
            code, node = ray.get(ref)
            reason = describe_exit(code)
        except ray.exceptions.RayError as exc:  # the Ray worker itself died or the task was lost
            code, node, reason = -1, "?", f"was lost by Ray ({type(exc).__name__})"
        if code == 0 and is_done(run_paths(self.out, cfg)):
            summary.done += 1
            summary.durations.append(time.time() - started)
            self.on_event(f"done {label(cfg)} on {node}")
            return None
        if code == DONE_ELSEWHERE:  # another sweep finished it first
            summary.skipped += 1
            return None
        if code == LOCKED_ELSEWHERE:
            time.sleep(1.0)
            if is_done(run_paths(self.out, cfg)):
                summary.skipped += 1
                return None
            return cfg
        attempts[cfg.run_id] = attempts.get(cfg.run_id, 0) + 1
        if attempts[cfg.run_id] <= self.retries:
            self.on_event(f"retrying {label(cfg)} after it {reason} (attempt {attempts[cfg.run_id] + 1})")
            return cfg
        record_failure(self.out, cfg, reason, attempts[cfg.run_id])
        summary.failed.append((cfg, reason, log_path(self.out, cfg)))
        self.on_event(f"failed {label(cfg)}: {reason}; log {log_path(self.out, cfg)}")
        return None

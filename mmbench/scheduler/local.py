"""The local backend: one worker process per run, packed onto GPUs or CPU cores.

Slots are GPUs (each taking `runs_per_gpu` runs, assigned through CUDA_VISIBLE_DEVICES) or,
without GPUs, `jobs` CPU slots that split the machine's cores between them. A crashing or
segfaulting run ends only its own process; it is retried up to `retries` times and then
recorded as failed (`failed/.../<run_id>.json`, with the log path). Finished runs are skipped, so a
sweep that was interrupted or killed resumes where it stopped; each worker holds its run's lock,
so two sweeps on one results folder never run the same run twice. Ctrl-C stops launching, ends
the running workers (their last finished epoch is checkpointed) and keeps every result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mmbench.config import RunConfig
from mmbench.cpus import default_threads
from mmbench.results import is_done, run_paths
from mmbench.scheduler import Event, Running, SweepSummary, Tick, label
from mmbench.scheduler.worker import (
    DONE_ELSEWHERE,
    LOCKED_ELSEWHERE,
    PARENT_ENV,
    describe_exit,
    log_path,
    record_failure,
    worker_command,
    write_spec,
)


@dataclass
class Task:
    cfg: RunConfig
    attempts: int = 0
    slot: int | None = None
    process: subprocess.Popen | None = None
    started: float = 0.0
    not_before: float = 0.0

    @property
    def label(self) -> str:
        return label(self.cfg)


@dataclass(frozen=True)
class Slots:
    """Where runs go: a list of (CUDA_VISIBLE_DEVICES value or None for CPU) per concurrent run."""

    devices: tuple[str | None, ...]
    threads: int

    @classmethod
    def plan(cls, jobs: int | None, gpus: list[str] | None, runs_per_gpu: int | None = 1,
             gpu_mem: float | None = None, gpu_total: dict[str, float] | None = None) -> Slots:
        """GPUs take `runs_per_gpu` runs each, or as many runs of `gpu_mem` GB as fit in 95 % of
        each GPU's memory (`gpu_total`, GB per id); without GPUs, `jobs` CPU slots share the cores."""
        if gpus:
            per_gpu = {g: runs_per_gpu or 1 for g in gpus}
            if gpu_mem is not None:
                per_gpu = {g: runs_fitting(gpu_total[g], gpu_mem) for g in gpus}
            devices = tuple(g for g in gpus for _ in range(per_gpu[g]))
            return cls(devices, threads=default_threads(len(devices)))  # the data path runs on CPU threads
        jobs = jobs or 1
        return cls((None,) * jobs, threads=default_threads(jobs))


def runs_fitting(total_gb: float, gpu_mem: float) -> int:
    """How many runs that each declare `gpu_mem` GB fit on a GPU of `total_gb` (5 % is left to the driver)."""
    fitting = int(0.95 * total_gb // gpu_mem)
    if fitting < 1:
        raise ValueError(f"--gpu-mem {gpu_mem:g}: a run needs more than this GPU's {total_gb:.1f} GB")
    return fitting


class LocalScheduler:
    def __init__(self, out: Path, slots: Slots, retries: int = 0, plugins: list[str] | None = None,
                 on_event: Event | None = None, poll_s: float = 0.2) -> None:
        self.out, self.slots, self.retries = Path(out), slots, retries
        self.plugins = list(plugins or [])
        self.on_event = on_event or (lambda message: None)
        self.poll_s = poll_s

    def where(self, slot: int) -> str:
        device = self.slots.devices[slot]
        return f"GPU {device}" if device is not None else f"CPU slot {slot}"

    def run(self, configs: list[RunConfig], on_tick: Tick | None = None) -> SweepSummary:
        summary = SweepSummary(total=len(configs))
        pending: deque[Task] = deque()
        for cfg in configs:
            if is_done(run_paths(self.out, cfg)):
                summary.skipped += 1
            else:
                pending.append(Task(cfg))
        running: dict[int, Task] = {}
        try:
            while pending or running:
                self._launch(pending, running, summary)
                self._reap(pending, running, summary)
                if on_tick:
                    on_tick(summary, [Running(t.cfg, self.where(s), t.started) for s, t in running.items()])
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            summary.interrupted = True
            self._stop(running)
        return summary

    def _launch(self, pending: deque[Task], running: dict[int, Task], summary: SweepSummary) -> None:
        free = [i for i in range(len(self.slots.devices)) if i not in running]
        now = time.time()
        for _ in range(len(pending)):
            if not free:
                return
            task = pending.popleft()
            if task.not_before > now:
                pending.append(task)
                continue
            if is_done(run_paths(self.out, task.cfg)):
                summary.skipped += 1  # finished meanwhile by another sweep: not this one's to count as done
                continue
            slot = free.pop(0)
            self._start(task, slot)
            running[slot] = task

    def _start(self, task: Task, slot: int) -> None:
        device = self.slots.devices[slot]
        cfg = task.cfg
        if cfg.num_threads == 0:
            cfg = dataclasses.replace(cfg, num_threads=self.slots.threads)
        spec = write_spec(self.out, cfg, self.plugins)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device if device is not None else "", PARENT_ENV: str(os.getpid()),
               "OMP_NUM_THREADS": str(cfg.num_threads)}
        log = log_path(self.out, cfg)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write(f"--- attempt {task.attempts + 1} on {self.where(slot)}\n")
            handle.flush()
            task.process = subprocess.Popen(worker_command(spec, self.out), stdout=handle, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        task.slot, task.started = slot, time.time()
        self.on_event(f"started {task.label} on {self.where(slot)}")

    def _reap(self, pending: deque[Task], running: dict[int, Task], summary: SweepSummary) -> None:
        for slot, task in list(running.items()):
            code = task.process.poll()
            if code is None:
                continue
            del running[slot]
            if code == 0 and is_done(run_paths(self.out, task.cfg)):
                summary.done += 1
                summary.durations.append(time.time() - task.started)
                self.on_event(f"done {task.label}")
            elif code == DONE_ELSEWHERE:  # another sweep finished it before this worker got its lock
                summary.skipped += 1
            elif code == LOCKED_ELSEWHERE:
                task.not_before = time.time() + 2.0  # look again later: done there, or free to run
                pending.append(task)
            else:
                task.attempts += 1
                reason = describe_exit(code)
                if task.attempts <= self.retries:
                    self.on_event(f"retrying {task.label} after it {reason} (attempt {task.attempts + 1})")
                    pending.append(task)
                else:
                    record_failure(self.out, task.cfg, reason, task.attempts)
                    summary.failed.append((task.cfg, reason, log_path(self.out, task.cfg)))
                    self.on_event(f"failed {task.label}: {reason}; log {log_path(self.out, task.cfg)}")

    def _stop(self, running: dict[int, Task]) -> None:
        for task in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(task.process.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for task in running.values():
            try:
                task.process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(task.process.pid, signal.SIGKILL)
                task.process.wait()

"""The local backend: one worker process per run, packed onto GPUs or CPU cores.

Slots are GPUs (each taking `runs_per_gpu` runs, assigned through CUDA_VISIBLE_DEVICES) or,
without GPUs, `jobs` CPU slots that split the machine's cores between them. A crashing or
segfaulting run ends only its own process; it is retried up to `retries` times and then
recorded as failed (`<run_id>.failed.json`, with the log path). Finished runs are skipped, so a
sweep that was interrupted or killed resumes where it stopped; each worker holds its run's lock,
so two sweeps on one results folder never run the same run twice. Ctrl-C stops launching, ends
the running workers (their last finished epoch is checkpointed) and keeps every result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.config import RunConfig
from mmbench.results import is_done, run_paths, write_json
from mmbench.scheduler.worker import LOCKED_ELSEWHERE


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
        return f"{self.cfg.method} {self.cfg.dataset} seed {self.cfg.seed} ({self.cfg.run_id})"


@dataclass
class SweepSummary:
    total: int
    done: int = 0
    skipped: int = 0
    failed: list[tuple[RunConfig, str, Path]] = field(default_factory=list)
    interrupted: bool = False
    durations: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Slots:
    """Where runs go: a list of (CUDA_VISIBLE_DEVICES value or None for CPU) per concurrent run."""

    devices: tuple[str | None, ...]
    threads: int

    @classmethod
    def plan(cls, jobs: int | None, gpus: list[str] | None, runs_per_gpu: int) -> Slots:
        if gpus:
            return cls(tuple(g for g in gpus for _ in range(runs_per_gpu)), threads=0)
        jobs = jobs or 1
        return cls((None,) * jobs, threads=max(1, (os.cpu_count() or 1) // jobs))


Event = Callable[[str], None]


class LocalScheduler:
    def __init__(self, out: Path, slots: Slots, retries: int = 0, plugins: list[str] | None = None,
                 on_event: Event | None = None, poll_s: float = 0.2) -> None:
        self.out, self.slots, self.retries = Path(out), slots, retries
        self.plugins = [str(Path(p).resolve()) for p in plugins or []]
        self.on_event = on_event or (lambda message: None)
        self.poll_s = poll_s
        self.logs = self.out / "logs"
        self.specs = self.out / ".specs"

    def run(self, configs: list[RunConfig], on_tick: Callable[[SweepSummary, list[Task]], None] | None = None
            ) -> SweepSummary:
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
                self._launch(pending, running)
                self._reap(pending, running, summary)
                if on_tick:
                    on_tick(summary, list(running.values()))
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            summary.interrupted = True
            self._stop(running)
        return summary

    def _launch(self, pending: deque[Task], running: dict[int, Task]) -> None:
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
                continue  # finished meanwhile by another sweep
            slot = free.pop(0)
            self._start(task, slot)
            running[slot] = task

    def _start(self, task: Task, slot: int) -> None:
        device = self.slots.devices[slot]
        cfg = task.cfg if device is not None else dataclasses.replace(task.cfg, num_threads=self.slots.threads)
        self.specs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        spec = self.specs / f"{cfg.run_id}.json"
        spec.write_text(json.dumps({"config": cfg.to_dict(), "plugins": self.plugins, "parent": os.getpid()}))
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        if device is None:
            env["OMP_NUM_THREADS"] = str(self.slots.threads)
        log = open(self.log_path(cfg), "a")
        log.write(f"--- attempt {task.attempts + 1} on {'GPU ' + device if device is not None else 'CPU'}\n")
        log.flush()
        task.process = subprocess.Popen([sys.executable, "-m", "mmbench.scheduler.worker", str(spec), str(self.out)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        task.slot, task.started = slot, time.time()
        self.on_event(f"started {task.label} on {'GPU ' + device if device is not None else 'CPU'}")

    def log_path(self, cfg: RunConfig) -> Path:
        return self.logs / f"{cfg.dataset}-{cfg.method}-seed{cfg.seed}-{cfg.run_id}.log"

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
            elif code == LOCKED_ELSEWHERE:
                task.not_before = time.time() + 2.0  # look again later: done there, or free to run
                pending.append(task)
            else:
                task.attempts += 1
                reason = _describe_exit(code)
                if task.attempts <= self.retries:
                    self.on_event(f"retrying {task.label} after it {reason} (attempt {task.attempts + 1})")
                    pending.append(task)
                else:
                    self._record_failure(task, reason)
                    summary.failed.append((task.cfg, reason, self.log_path(task.cfg)))
                    self.on_event(f"failed {task.label}: {reason}; log {self.log_path(task.cfg)}")

    def _record_failure(self, task: Task, reason: str) -> None:
        paths = run_paths(self.out, task.cfg)
        previous = {}
        if paths.failed.exists():
            previous = json.loads(paths.failed.read_text())
        write_json(paths.failed, {**previous, "run_id": task.cfg.run_id, "worker": reason,
                                  "attempts": task.attempts, "log": str(self.log_path(task.cfg)),
                                  "config": previous.get("config", task.cfg.to_dict())})

    def _stop(self, running: dict[int, Task]) -> None:
        for task in running.values():
            with _ignore(ProcessLookupError):
                os.killpg(task.process.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for task in running.values():
            try:
                task.process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with _ignore(ProcessLookupError):
                    os.killpg(task.process.pid, signal.SIGKILL)
                task.process.wait()


class _ignore:
    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, self.errors)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"

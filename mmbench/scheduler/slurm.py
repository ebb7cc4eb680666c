"""The SLURM backend: a sweep becomes one job array, submitted with submitit.

Each array element runs the same worker process as the local backend (lock, skip if done,
train, checkpoint every epoch) on the GPUs SLURM allocated to it (SLURM sets
CUDA_VISIBLE_DEVICES). A preempted or timed-out element is requeued by submitit and its run
resumes from its last finished epoch. The submitted job ids are kept in `<out>/.slurm/jobs.json`,
so `mmbench sweep` can return at once (`--no-wait`) and be run again later to collect: runs
already done are skipped, runs still queued or running are watched, not submitted twice.
Job state comes from `squeue`, so no SLURM accounting database is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench.config import RunConfig
from mmbench.results import is_done, run_paths, write_json
from mmbench.scheduler import Event, Running, SweepSummary, Tick, label, missing_extra
from mmbench.scheduler.worker import describe_exit, log_path, record_failure, run_worker, write_spec


class SlurmError(RuntimeError):
    """sbatch or squeue failed; the message is one line for the user."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    gpus_per_task: int = 1
    cpus_per_task: int = 4
    mem_gb: float | None = None
    array_parallelism: int = 64
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: requeue and resume
    max_requeues: int = 20
    extra: dict[str, str] = field(default_factory=dict)  # e.g. account=..., qos=...

    def executor_parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "job_name": "mmbench", "time": self.time_min, "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism, "signal_delay_s": self.signal_delay_s,
            "stderr_to_stdout": True,
        }
        if self.gpus_per_task:
            params["gpus_per_node"] = self.gpus_per_task
        if self.partition:
            params["partition"] = self.partition
        if self.mem_gb is not None:
            params["mem"] = f"{int(self.mem_gb * 1024)}M"
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


class SlurmWorker:
    """What an array element executes. `checkpoint` is submitit's hook on preemption or
    timeout: it resubmits the same call, and the worker resumes from the run's checkpoint."""

    def __call__(self, spec: str, out: str, log: str) -> int:
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "?"))
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        header = (f"attempt in SLURM job {job}{'_' + task if task else ''} on {os.uname().nodename}, "
                  f"restart {os.environ.get('SLURM_RESTART_COUNT', '0')}")
        return run_worker(Path(spec), Path(out), Path(log), header=header)

    def checkpoint(self, spec: str, out: str, log: str) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, spec, out, log)


class SlurmScheduler:
    def __init__(self, out: Path, options: SlurmOptions, retries: int = 0, plugins: list[str] | None = None,
                 on_event: Event | None = None, poll_s: float = 3.0, wait: bool = True) -> None:
        self.out, self.options, self.retries = Path(out), options, retries
        self.plugins = list(plugins or [])
        self.on_event = on_event or (lambda message: None)
        self.poll_s, self.wait = poll_s, wait
        self.record_file = self.out / ".slurm" / "jobs.json"

    def run(self, configs: list[RunConfig], on_tick: Tick | None = None) -> SweepSummary:
        summary = SweepSummary(total=len(configs))
        record = self._load_record()
        unfinished = [cfg for cfg in configs if not is_done(run_paths(self.out, cfg))]
        summary.skipped = len(configs) - len(unfinished)
        queue = squeue_states() if unfinished else {}
        watching: dict[str, RunConfig] = {}
        todo = []
        for cfg in unfinished:
            if record.get(cfg.run_id, {}).get("job_id") in queue:
                watching[cfg.run_id] = cfg
            else:
                todo.append(cfg)
        if watching:
            self.on_event(f"{len(watching)} runs are still queued or running from an earlier submission")
        self._submit(todo, record)
        watching.update({cfg.run_id: cfg for cfg in todo})
        if not self.wait:
            summary.detached = True
            return summary
        try:
            self._watch(watching, record, summary, on_tick)
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.detached = True
        return summary

    def _watch(self, watching: dict[str, RunConfig], record: dict[str, dict], summary: SweepSummary,
               on_tick: Tick | None) -> None:
        attempts: dict[str, int] = {}
        first_seen: dict[str, float] = {}
        last_pending: dict[str, int] = {}
        while watching:
            queue = squeue_states()
            retry = []
            for run_id, cfg in list(watching.items()):
                job_id = record[run_id]["job_id"]
                if is_done(run_paths(self.out, cfg)):
                    del watching[run_id]
                    summary.done += 1
                    if run_id in first_seen:
                        summary.durations.append(time.time() - first_seen[run_id])
                    self.on_event(f"done {label(cfg)} (SLURM job {job_id})")
                elif job_id not in queue:
                    del watching[run_id]
                    attempts[run_id] = attempts.get(run_id, 0) + 1
                    reason = self._ended_without_result(job_id)
                    if attempts[run_id] <= self.retries:
                        self.on_event(f"resubmitting {label(cfg)} after SLURM job {job_id} {reason}")
                        retry.append(cfg)
                    else:
                        record_failure(self.out, cfg, f"SLURM job {job_id} {reason}", attempts[run_id])
                        summary.failed.append((cfg, f"SLURM job {job_id} {reason}", log_path(self.out, cfg)))
                elif queue[job_id][0] == "RUNNING":
                    first_seen.setdefault(run_id, time.time())
            if retry:
                self._submit(retry, record)
                watching.update({cfg.run_id: cfg for cfg in retry})
            last_pending = self._report_pending(watching, record, queue, last_pending)
            if on_tick:
                on_tick(summary, [Running(cfg, f"SLURM {record[rid]['job_id']} on {queue[record[rid]['job_id']][1]}",
                                          first_seen[rid]) for rid, cfg in watching.items() if rid in first_seen
                                  and record[rid]["job_id"] in queue])
            if watching:
                time.sleep(self.poll_s)

    def _report_pending(self, watching: dict[str, RunConfig], record: dict[str, dict],
                        queue: dict[str, tuple[str, str, str]], last: dict[str, int]) -> dict[str, int]:
        """Say why runs wait, when that changes: a request no node can meet waits forever."""
        reasons = Counter(queue[record[rid]["job_id"]][2] or "unknown" for rid in watching
                          if queue.get(record[rid]["job_id"], ("",))[0] == "PENDING")
        if reasons and dict(reasons) != last:
            self.on_event("SLURM: " + ", ".join(f"{n} runs pending ({why})" for why, n in reasons.items())
                          + "; reasons such as BadConstraints, PartitionConfig or ReqNodeNotAvail mean no node "
                          "can meet the request (see --slurm gpus_per_task, cpus_per_task, mem_gb)")
        return dict(reasons)

    def _submit(self, configs: list[RunConfig], record: dict[str, dict]) -> None:
        if not configs:
            return
        try:
            import submitit
        except ImportError:
            raise missing_extra("submitit", "slurm") from None
        executor = submitit.SlurmExecutor(folder=self.out / ".slurm" / "%j", max_num_timeout=self.options.max_requeues)
        executor.update_parameters(**self.options.executor_parameters())
        calls = []
        for cfg in configs:
            if cfg.num_threads == 0:  # the run's threads are the CPUs SLURM gives it, not the node's
                cfg = dataclasses.replace(cfg, num_threads=self.options.cpus_per_task)
            calls.append((cfg.run_id, str(write_spec(self.out, cfg, self.plugins)), str(self.out),
                          str(log_path(self.out, cfg))))
        try:
            with executor.batch():
                jobs = [executor.submit(SlurmWorker(), spec, out, log) for _, spec, out, log in calls]
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
            raise SlurmError(f"sbatch failed: {_one_line(exc)}") from None
        for (run_id, *_), job in zip(calls, jobs, strict=True):
            record[run_id] = {"job_id": job.job_id, "folder": str(job.paths.folder), "submitted": time.time()}
        write_json(self.record_file, record)
        array = jobs[0].job_id.split("_")[0]
        self.on_event(f"submitted {len(jobs)} runs as SLURM job array {array} (cancel with `scancel {array}`)")

    def _ended_without_result(self, job_id: str) -> str:
        """Why a job left the queue without a run row: its own result, else its submitit log."""
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.out / ".slurm" / "%j", job_id=job_id, task_id=0)
        if paths.result_pickle.exists():
            import pickle

            status, value = pickle.loads(paths.result_pickle.read_bytes())
            if status == "success":
                return f"ended: the worker {describe_exit(int(value))}"
            return f"raised {_one_line(value)} (log {paths.stdout})"
        return f"ended without a result (cancelled, out of time or memory, or the node failed; log {paths.stdout})"

    def _load_record(self) -> dict[str, dict]:
        if not self.record_file.exists():
            return {}
        try:
            return json.loads(self.record_file.read_text())
        except json.JSONDecodeError:
            return {}  # a damaged record only means earlier jobs are not watched


def squeue_states() -> dict[str, tuple[str, str, str]]:
    """{job id (array elements as 123_4): (state, node, reason)} for this user's jobs."""
    try:
        listing = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i|%T|%N|%r"], capture_output=True, text=True,
                                 timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"squeue failed: {exc}; is SLURM installed and its controller reachable?") from None
    if listing.returncode != 0:
        raise SlurmError(f"squeue failed: {_one_line(listing.stderr)}")
    states = {}
    for line in listing.stdout.splitlines():
        job_id, state, node, reason = (line.split("|") + ["", "", ""])[:4]
        states[job_id.strip()] = (state.strip(), node.strip(), reason.strip())
    return states


def _one_line(value: object) -> str:
    text = str(getattr(value, "stderr", None) or value).strip().splitlines()
    return text[-1] if text else repr(value)

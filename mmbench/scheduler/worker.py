"""One run in its own process, the unit every backend executes:

    python -m mmbench.scheduler.worker SPEC.json RESULTS_DIR

SPEC.json holds the resolved config (and plugin files). The worker takes the run's lock file,
so two sweeps on one results folder never run the same run at once, and it dies with the
process named by MMBENCH_PARENT_PID (Linux), so a killed sweep leaves no orphans; its
checkpoints make the run resumable. The local, SLURM and Ray backends all start this module.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

LOCKED_ELSEWHERE = 75  # exit status: another sweep is running this run
DONE_ELSEWHERE = 76  # exit status: the run was finished (by another process) when the worker took its lock
EXIT_STATUS = {"trained": 0, "done": DONE_ELSEWHERE, "failed": 1, "locked": LOCKED_ELSEWHERE}
PARENT_ENV = "MMBENCH_PARENT_PID"
TERMINAL_ENV = "MMBENCH_WORKER_TERMINAL"  # set by `mmbench run`: the worker shows its epochs to the user


def lock_path(out: Path, run_id: str) -> Path:
    return out / ".locks" / f"{run_id}.lock"


def log_path(out: Path, cfg: Any) -> Path:
    """One log per run, whichever backend ran it (attempts are appended)."""
    return Path(out) / "logs" / f"{cfg.dataset}-{cfg.method}-seed{cfg.seed}-{cfg.run_id}.log"


def write_spec(out: Path, cfg: Any, plugins: list[str]) -> Path:
    """The file a worker is started with: the resolved config and the plugin files to import."""
    spec = Path(out) / ".specs" / f"{cfg.run_id}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"config": cfg.to_dict(), "plugins": [str(Path(p).resolve()) for p in plugins]}))
    return spec


def worker_command(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mmbench.scheduler.worker", str(spec), str(out)]


def run_worker(spec: Path, out: Path, log: Path, env: dict[str, str] | None = None, header: str = "") -> int:
    """Run one worker to its end (for backends whose task is itself a process: SLURM, Ray);
    its output is appended to `log`. Returns the exit status (negative: killed by a signal)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
    with open(log, "a") as handle:
        handle.write(f"--- {header or 'attempt'}\n")
        handle.flush()
        return subprocess.run(worker_command(spec, out), stdout=handle, stderr=subprocess.STDOUT, env=env).returncode


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def record_failure(out: Path, cfg: Any, reason: str, attempts: int) -> None:
    """Add the scheduler's view (how the worker ended, attempts, log) to `failed/.../<run_id>.json`."""
    from mmbench.results import run_paths, write_json

    paths = run_paths(out, cfg)
    previous = json.loads(paths.failed.read_text()) if paths.failed.exists() else {}
    write_json(paths.failed, {**previous, "run_id": cfg.run_id, "worker": reason, "attempts": attempts,
                              "log": str(log_path(out, cfg)), "config": previous.get("config", cfg.to_dict())})


def try_lock(path: Path) -> IO | None:
    """An exclusive lock held for the life of the returned file (released by the OS on any exit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGTERM when `parent` dies (PR_SET_PDEATHSIG); exit if it is gone already."""
    if sys.platform == "linux":
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


def execute(cfg: Any, out: Path, reporter: Any, announce_lock: bool = True) -> str:
    """Lock, skip if done, train. Returns "trained", "done" (already), "failed" (the engine
    recorded why in `failed/.../<run_id>.json`) or "locked" (another sweep is running it)."""
    from mmbench.results import is_done, run_paths
    from mmbench.train import engine

    lock = try_lock(lock_path(out, cfg.run_id))
    if lock is None:
        if announce_lock:
            print(f"run {cfg.run_id} is being run by another sweep on {out}", flush=True)
        return "locked"
    with lock:
        if is_done(run_paths(out, cfg)):
            return "done"
        try:
            engine.run(cfg, out, reporter)
        except engine.RunFailed as exc:
            print(f"failed: {exc}", flush=True)
            return "failed"
    return "trained"


def main(argv: list[str] | None = None) -> int:
    spec_file, out = (argv or sys.argv[1:])[:2]
    if os.environ.get(PARENT_ENV):
        die_with_parent(int(os.environ[PARENT_ENV]))
    spec = json.loads(Path(spec_file).read_text())

    from rich.console import Console

    from mmbench.config import RunConfig
    from mmbench.registry import load_plugins
    from mmbench.train.progress import PlainReporter, make_reporter

    load_plugins(spec.get("plugins") or None)
    cfg = RunConfig(**spec["config"])
    if os.environ.get(TERMINAL_ENV) == "1":  # `mmbench run` shows this run's epochs as it does in-process
        reporter = make_reporter(Console())
        try:
            outcome = execute(cfg, Path(out), reporter, announce_lock=False)
        finally:
            getattr(reporter, "close", lambda: None)()
        return EXIT_STATUS[outcome]
    print(f"worker start {time.time():.3f} run {cfg.run_id} {cfg.method} seed {cfg.seed} pid {os.getpid()} "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} threads {cfg.num_threads}", flush=True)
    outcome = execute(cfg, Path(out), PlainReporter(Console(highlight=False, width=200)))
    if outcome == "trained":
        print(f"worker end {time.time():.3f}", flush=True)
    elif outcome == "done":
        print("already done", flush=True)
    return EXIT_STATUS[outcome]


if __name__ == "__main__":
    sys.exit(main())

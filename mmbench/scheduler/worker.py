"""One run in its own process, the unit every backend executes:

    python -m mmbench.scheduler.worker SPEC.json RESULTS_DIR

SPEC.json holds the resolved config (and plugin files). The worker takes the run's lock file,
so two sweeps on one results folder never run the same run at once, and it dies with its
scheduler (Linux), so a killed sweep leaves no orphans; its checkpoints make the run resumable.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO

LOCKED_ELSEWHERE = 75  # exit status: another sweep is running this run


def lock_path(out: Path, run_id: str) -> Path:
    return out / ".locks" / f"{run_id}.lock"


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


def _die_with_parent(parent: int) -> None:
    if sys.platform == "linux":
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the scheduler died before prctl took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    spec_file, out = (argv or sys.argv[1:])[:2]
    spec = json.loads(Path(spec_file).read_text())
    if spec.get("parent"):
        _die_with_parent(int(spec["parent"]))
    out_dir = Path(out)

    from rich.console import Console

    from mmbench import engine
    from mmbench.config import RunConfig
    from mmbench.progress import PlainReporter
    from mmbench.registry import load_plugins
    from mmbench.results import is_done, run_paths

    load_plugins(spec.get("plugins") or None)
    cfg = RunConfig(**spec["config"])
    lock = try_lock(lock_path(out_dir, cfg.run_id))
    if lock is None:
        print(f"run {cfg.run_id} is being run by another sweep on {out_dir}", flush=True)
        return LOCKED_ELSEWHERE
    print(f"worker start {time.time():.3f} run {cfg.run_id} {cfg.method} seed {cfg.seed} pid {os.getpid()} "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} threads {cfg.num_threads}", flush=True)
    if is_done(run_paths(out_dir, cfg)):
        print("already done", flush=True)
        return 0
    try:
        engine.run(cfg, out_dir, PlainReporter(Console(highlight=False, width=200)))
    except engine.RunFailed as exc:
        print(f"failed: {exc}", flush=True)
        return 1
    print(f"worker end {time.time():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

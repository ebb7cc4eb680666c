"""Runs one after another in this terminal, each with a view of its epochs: what `mmbench run` does when
the runs would get one slot anyway. A single run trains in this process; several each in a worker process
of its own, so that a native crash (a segfault in a method's extension) ends only that run, recorded as
failed, and the next one still runs (as in `sweep`). The runs the methods require come first; a run whose
required run failed fails without starting."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mmbench.config import RunConfig
from mmbench.results import is_done, read_row, run_paths
from mmbench.scheduler import worker
from mmbench.train.dependencies import blocked, in_waves, record_blocked, required_by


def run_in_order(configs: list[RunConfig], out: Path, console: Console, err: Console, retries: int = 0,
                 plugins: list[str] | None = None) -> tuple[list[RunConfig], int]:
    """Every run of `configs`, and those they require, first; returns (the failed runs, how many ran in all).
    Ctrl-C raises KeyboardInterrupt once it has said how to resume."""
    waves, notes = in_waves(configs), required_by(configs)
    everything = [cfg for wave in waves for cfg in wave]
    execute = worker.execute
    if sum(not is_done(run_paths(out, cfg)) for cfg in everything) > 1:
        execute = functools.partial(execute_in_child, console=console, plugins=plugins or [])
    failures = []
    for cfg in everything:
        paths = run_paths(out, cfg)
        name = f"{cfg.method} seed {cfg.seed}" + (f" ({notes[cfg.run_id]})" if cfg.run_id in notes else "")
        reason = blocked(cfg, out)
        if reason is not None:
            record_blocked(out, cfg, reason)
            err.print(f"[bold red]failed:[/] {name}: {reason}", markup=True, highlight=False)
            failures.append(cfg)
            continue
        outcome = execute_with_retries(cfg, out, retries, execute, console, err)
        if outcome == "done":
            console.print(f"{name}: already done ({paths.row})", markup=False)
        elif outcome == "done elsewhere":
            console.print(f"{name}: done by another mmbench process ({paths.row})", markup=False)
        elif outcome == "failed":
            err.print(f"[bold red]failed:[/] {name}: see {paths.failed}", markup=True, highlight=False)
            failures.append(cfg)
        else:
            row = read_row(paths)
            console.print(f"{name}: test acc {row['best_val_acc']:.4f} "
                          f"(best-val epoch {row['best_val_epoch'] + 1} of {cfg.epochs}), "
                          f"final {row['final_acc']:.4f}, {row['wall_s']:.0f}s -> {paths.row}", markup=False)
    return failures, len(everything)


def execute_with_retries(cfg: RunConfig, out: Path, retries: int, execute: Any, console: Console,
                         err: Console) -> str:
    from mmbench.train.progress import make_reporter

    for attempt in range(retries + 1):
        reporter = make_reporter(console)
        try:
            outcome = execute_or_wait(cfg, out, reporter, execute, err)
        except KeyboardInterrupt:
            getattr(reporter, "close", lambda: None)()
            err.print(f"interrupted: {cfg.method} seed {cfg.seed} resumes from its last finished "
                      "epoch when you run the same command again")
            raise
        getattr(reporter, "close", lambda: None)()
        if outcome != "failed":
            break
        if attempt < retries:
            err.print(f"retrying {cfg.method} seed {cfg.seed} (attempt {attempt + 2})")
    return outcome


def execute_or_wait(cfg: RunConfig, out: Path, reporter: Any, execute: Any, err: Console | None = None,
                    poll_s: float = 2.0) -> str:
    """Train the run, or, while another mmbench process holds its lock, wait for that one: the command
    ends with the result either way ("done elsewhere"), or trains the run itself if the other failed."""
    waited = False
    while True:
        outcome = execute(cfg, out, reporter, announce_lock=False)
        if outcome != "locked":
            return "done elsewhere" if waited and outcome == "done" else outcome
        if not waited and err is not None:
            err.print(f"{cfg.method} seed {cfg.seed}: another mmbench process is running it on {out}; waiting "
                      "for it (Ctrl-C leaves it running)")
        waited = True
        time.sleep(poll_s)


def execute_in_child(cfg: RunConfig, out: Path, reporter: Any, announce_lock: bool = False,
                     console: Console | None = None, plugins: list[str] | None = None) -> str:
    """`worker.execute` in a worker process: "trained", "done", "failed" or "locked". The worker draws on
    this terminal; where this command's output is not a terminal its lines are passed on."""
    if is_done(run_paths(out, cfg)):
        return "done"
    spec = worker.write_spec(out, cfg, plugins or [])
    env = {**os.environ, worker.PARENT_ENV: str(os.getpid()), worker.TERMINAL_ENV: "1"}
    relay = console is not None and not console.is_terminal
    child = subprocess.Popen(worker.worker_command(spec, out), env=env, text=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if relay else None, stderr=subprocess.STDOUT if relay else None)
    try:
        for line in child.stdout if relay else ():
            console.print(line.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        code = child.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the worker stops too; its last finished epoch is kept
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise
    if code == worker.LOCKED_ELSEWHERE:
        return "locked"
    if code == worker.DONE_ELSEWHERE:
        return "done"
    if code == 0:
        return "trained" if is_done(run_paths(out, cfg)) else "failed"
    if not run_paths(out, cfg).failed.exists() or code != 1:  # killed: the engine could not record why
        worker.record_failure(out, cfg, f"the worker process {worker.describe_exit(code)}", attempts=1)
    return "failed"

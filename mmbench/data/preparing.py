"""What `mmbench prepare` does and prints: scan a dataset's folder, decode every clip once into the feature
cache (with a progress bar on a terminal, a line per 10 % elsewhere), then say what was kept, what was skipped
and why, and the command that trains on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from mmbench.data import cache as cache_mod
from mmbench.data.prepared import check_not_lfs


def prepare(cls: Any, params: dict[str, Any], jobs: int, strict: bool, console: Console) -> None:
    """Scan, decode into the cache (with a progress bar) and say what was kept, skipped and what to run next."""
    root = cls.data_root(params)
    scan = cls.scan(root, params)
    check_not_lfs(scan)
    prep = cls.preprocessing(params, scan)
    target = cls.cache_dir(params, root)
    console.print(f"{cls.name}: {root} ({scan.layout} layout): {len(scan.clips)} clips, "
                  f"{len(scan.bad)} rejected while scanning; audio front-end {prep.frontend}; "
                  f"split files: {', '.join(scan.split_files) or 'none'}", markup=False)
    meta = {"dataset": cls.name, "dataset_version": cls.version, "params": cls.prepare_params(params)}
    started = time.perf_counter()
    with _ProgressBar(console, f"decoding ({jobs} process{'es' if jobs > 1 else ''})") as update:
        prepared = cache_mod.prepare(scan, prep, target, root, meta, jobs=jobs, strict=strict, on_progress=update)
    manifest, seconds = prepared.manifest, time.perf_counter() - started
    if prepared.reused:
        console.print(f"already prepared, inputs unchanged: {target} ({manifest['n_clips']} clips)", markup=False)
    else:
        console.print(f"prepared {manifest['n_clips']} clips in {seconds:.1f} s "
                      f"({len(scan.clips) / max(seconds, 1e-9):.1f} clips/s) -> {target} "
                      f"({manifest['bytes'] / 2**20:.1f} MiB)", markup=False)
    _print_bad_clips(target, manifest, console)
    # The run must ask for the same preprocessing (it is part of the run's config) and cache.
    settings = "".join(f" --set {k}={params[k]}" for k in cls.prepare_params(params) if params[k] != cls.params[k])
    cache_opt = f" --set cache={params['cache']}" if params.get("cache") else ""
    console.print(f"next: mmbench run --method joint --dataset {cls.name} --data-root {root}{cache_opt}{settings}",
                  markup=False)


def _print_bad_clips(target: Path, manifest: dict[str, Any], console: Console) -> None:
    if manifest.get("n_truncated"):
        cut = pd.read_csv(target / "truncated_clips.csv")
        console.print(f"kept {cut['clip'].nunique()} truncated clip(s): a file holds less than its header "
                      "declares (a download or copy that stopped early?); the list: "
                      f"{target / 'truncated_clips.csv'}", markup=False)
        for row in cut.head(3).itertuples():
            console.print(f"  {row.clip}: {row.reason}", markup=False)
    if not manifest["n_bad"]:
        return
    bad = pd.read_csv(target / "bad_clips.csv")
    counts = ", ".join(f"{n} {problem}" for problem, n in bad["problem"].value_counts().items())
    console.print(f"skipped {len(bad)} bad clip(s) ({counts}); the list: {target / 'bad_clips.csv'}", markup=False)
    for row in bad.head(5).itertuples():
        console.print(f"  {row.clip}: {row.reason}", markup=False)


class _ProgressBar:
    """A rich bar on a terminal, one line per 10 % otherwise; yields an update(done, total)."""

    def __init__(self, console: Console, label: str) -> None:
        self.console, self.label, self.bar, self.task, self.last = console, label, None, None, -1

    def __enter__(self) -> Any:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
        elif total and (done == total or done * 10 // total > self.last):
            self.last = done * 10 // total
            self.console.print(f"{self.label}: {done}/{total} clips", markup=False)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

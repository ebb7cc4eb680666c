"""What a sweep shows while it runs: a live panel on a terminal (done, running, failed, ETA,
occupancy per GPU or slot, the runs in flight), one line per event and a status line every
30 s in a log or pipe."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mmbench.scheduler import Running, SweepSummary


def status_line(summary: SweepSummary, running: list[Running]) -> str:
    finished = summary.done + len(summary.failed)
    left = summary.total - summary.skipped - finished
    line = (f"sweep: {summary.done + summary.skipped}/{summary.total} done ({summary.skipped} before), "
            f"{len(running)} running, {len(summary.failed)} failed")
    if summary.durations and left > 0:
        per_run = sum(summary.durations) / len(summary.durations)
        line += f", ETA {per_run * left / max(1, len(running)) / 60:.1f} min"
    return line


class SweepDisplay:
    def __init__(self, console: Console, every_s: float = 30.0) -> None:
        self.console, self.every_s = console, every_s
        self.live: Live | None = None
        self.last = 0.0

    def __enter__(self) -> SweepDisplay:
        if self.console.is_terminal:
            self.live = Live(Text("starting..."), console=self.console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def event(self, message: str) -> None:
        self.console.print(message, markup=False)

    def tick(self, summary: SweepSummary, running: list[Running]) -> None:
        if self.live is not None:
            self.live.update(self.render(summary, running))
        elif time.time() - self.last >= self.every_s:
            self.last = time.time()
            self.console.print(status_line(summary, running), markup=False)

    def render(self, summary: SweepSummary, running: list[Running]) -> Group:
        occupancy = Counter(r.where for r in running)
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for column in ("where", "run", "elapsed"):
            table.add_column(column)
        now = time.time()
        for run in sorted(running, key=lambda r: r.where):
            elapsed = time.strftime("%H:%M:%S", time.gmtime(now - run.started)) if run.started else "-"
            table.add_row(run.where, f"{run.cfg.method} {run.cfg.dataset} seed {run.cfg.seed}", elapsed)
        busy = "  ".join(f"{where}: {count}" for where, count in sorted(occupancy.items()))
        return Group(Text(status_line(summary, running), style="bold"), Text(f"occupancy  {busy or '-'}"), table)

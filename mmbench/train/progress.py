"""Progress display: a rich live bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmbench.config import RunConfig
from mmbench.train.engine import Reporter


def _fmt(value: Any) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def run_label(cfg: RunConfig) -> str:
    return f"{cfg.method} seed {cfg.seed}"


def epoch_line(cfg: RunConfig, epochs: int, row: dict[str, Any]) -> str:
    return (f"[{run_label(cfg)}] epoch {row['epoch'] + 1}/{epochs} loss {row['train_loss']:.4f} "
            f"val acc {_fmt(row.get('val_acc'))} test acc {_fmt(row.get('test_acc'))} "
            f"(a {_fmt(row.get('test_acc_head_a'))}, v {_fmt(row.get('test_acc_head_v'))}) {row['epoch_wall_s']:.1f}s")


class PlainReporter(Reporter):
    """For logs and pipes: a line per epoch, no control characters."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None:
        self.cfg, self.epochs = cfg, epochs
        resumed = f", resuming after epoch {start_epoch}" if start_epoch else ""  # epochs count from 1
        self.console.print(f"[{run_label(cfg)}] run {cfg.run_id}: {epochs} epochs x {steps} steps{resumed}",
                           markup=False)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        self.console.print(epoch_line(self.cfg, self.epochs, row), markup=False)


class RichReporter(Reporter):
    """For terminals: one bar over the run's steps, with epoch, loss and val accuracy."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None:
        self.cfg, self.epochs, self.epoch, self.val_acc = cfg, epochs, start_epoch, math.nan
        self.loss_read_at = -math.inf
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self._describe(math.nan), total=epochs * steps,
                                           completed=start_epoch * steps)

    def _describe(self, loss: float) -> str:
        return (f"{run_label(self.cfg)} │ epoch {min(self.epoch + 1, self.epochs)}/{self.epochs} │ "
                f"loss {_fmt(loss)} │ val acc {_fmt(self.val_acc)}")

    def step(self, loss: torch.Tensor) -> None:
        assert self.progress is not None
        now = time.monotonic()
        if now - self.loss_read_at < 0.5:  # reading the loss is a host-device sync: twice a second at most
            self.progress.update(self.task, advance=1)
            return
        self.loss_read_at = now
        self.progress.update(self.task, advance=1, description=self._describe(float(loss)))

    def epoch_finished(self, row: dict[str, Any]) -> None:
        self.epoch, self.val_acc = row["epoch"] + 1, row.get("val_acc", self.val_acc)
        if self.progress is not None:  # printed above the bar, so the history stays when the bar goes
            self.progress.console.print(epoch_line(self.cfg, self.epochs, row), markup=False, highlight=False)

    def run_finished(self, row: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_reporter(console: Console) -> Reporter:
    return RichReporter(console) if console.is_terminal else PlainReporter(console)

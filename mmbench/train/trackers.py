"""Optional experiment trackers (`--log tensorboard,wandb,mlflow`, the core key `log`).

A tracker is a Reporter: it sees the run start, each finished epoch's row (the values the epochs table
stores, already on the host: logging adds no device sync) and the final run row. The results folder
stays the record; a tracker is a view of it in the tool a lab already uses. Each needs its package,
installed with the extra of the same name (`pip install "mmbench[tensorboard]"`); without it the
config is refused before anything runs.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from mmbench.config import ConfigError, RunConfig, to_yaml
from mmbench.train.engine import Reporter

TRACKERS = ("tensorboard", "wandb", "mlflow")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# What a tracker shows at the end of the run: the run's own results, not every stored column.
_RESULT_KEYS = ("final_acc", "best_val_acc", "final_macro_f1", "best_val_macro_f1", "final_acc_head_a",
                "final_acc_head_v", "final_imbalance_degree", "best_val_epoch", "paper_max_acc", "wall_s")


def parse_log(value: str) -> tuple[str, ...]:
    """`none` or a comma-separated list of trackers; an error names what is allowed and what to install."""
    names = tuple(dict.fromkeys(n.strip() for n in str(value).split(",") if n.strip() and n.strip() != "none"))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"log={value!r}: unknown tracker {unknown[0]!r}; choices: none, {', '.join(TRACKERS)} "
                          "(several separated by commas)")
    missing = [n for n in names if importlib.util.find_spec(_PACKAGE[n]) is None]
    if missing:
        raise ConfigError(f"log={value}: the {missing[0]} package is not installed; pip install "
                          f"\"mmbench[{missing[0]}]\" (or drop --log {missing[0]})")
    return names


def open_trackers(cfg: RunConfig, out: Path) -> list[Reporter]:
    return [{"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}[name](cfg, Path(out))
            for name in parse_log(cfg.log)]


class Tee(Reporter):
    """Every event to each reporter: the terminal view first, then the trackers."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None:
        for reporter in self.reporters:
            reporter.run_started(cfg, epochs, steps, start_epoch)

    def step(self, loss: Any) -> None:
        for reporter in self.reporters:
            reporter.step(loss)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.epoch_finished(row)

    def run_finished(self, row: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.run_finished(row)


def metrics_of(row: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """The finite numbers of a row (flags, text and NaN left out), by name."""
    return {k: float(v) for k, v in row.items() if (keys is None or k in keys) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v) and k != "epoch"}


def run_name(cfg: RunConfig) -> str:
    return f"{cfg.dataset}-{cfg.method}-seed{cfg.seed}-{cfg.run_id}"


class Tracker(Reporter):
    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out

    def close(self, ok: bool) -> None:
        """End the tracker's run (`ok` False: the run failed or was interrupted)."""


class TensorBoard(Tracker):
    """Event files in <out>/tensorboard/<dataset>-<method>-seed<N>-<run_id>/ (`tensorboard --logdir`)."""

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / "tensorboard" / run_name(cfg)), purge_step=start_epoch + 1)
        self.writer.add_text("config", f"```\n{to_yaml(cfg)}\n```", 0)

    def epoch_finished(self, row: dict[str, Any]) -> None:
        for key, value in metrics_of(row).items():
            self.writer.add_scalar(key, value, row["epoch"] + 1)  # epochs count from 1, as everywhere

    def run_finished(self, row: dict[str, Any]) -> None:
        for key, value in metrics_of(row, _RESULT_KEYS).items():
            self.writer.add_scalar(f"result/{key}", value, self.cfg.epochs)

    def close(self, ok: bool) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


class WandB(Tracker):
    """A W&B run per mmbench run, resumed with it (its id is the run_id); project from WANDB_PROJECT
    (default mmbench), offline when WANDB_MODE=offline."""

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mmbench"), name=run_name(cfg),
                              id=cfg.run_id, resume="allow", group=f"{cfg.dataset}-{cfg.method}",
                              config=cfg.to_dict(), dir=str(self.out))

    def epoch_finished(self, row: dict[str, Any]) -> None:
        self.run.log(metrics_of(row), step=row["epoch"] + 1)

    def run_finished(self, row: dict[str, Any]) -> None:
        self.run.summary.update(metrics_of(row, _RESULT_KEYS))

    def close(self, ok: bool) -> None:
        if hasattr(self, "run"):
            self.run.finish(exit_code=0 if ok else 1)


class MLflow(Tracker):
    """An MLflow run per mmbench run in the experiment `mmbench-<dataset>`; tracking URI from
    MLFLOW_TRACKING_URI, else <out>/mlruns."""

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (self.out / "mlruns").resolve().as_uri())
        mlflow.set_experiment(f"mmbench-{cfg.dataset}")
        mlflow.start_run(run_name=run_name(cfg), tags={"mmbench.run_id": cfg.run_id, "mmbench.method": cfg.method})
        flat = {k: v for k, v in cfg.to_dict().items() if k not in ("hparams", "data")}
        flat.update({f"hp.{k}": v for k, v in cfg.hparams.items()})
        flat.update({f"data.{k}": v for k, v in cfg.data.items()})
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    def epoch_finished(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics(metrics_of(row), step=row["epoch"] + 1)

    def run_finished(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({f"result.{k}": v for k, v in metrics_of(row, _RESULT_KEYS).items()})

    def close(self, ok: bool) -> None:
        if hasattr(self, "mlflow"):
            self.mlflow.end_run(status="FINISHED" if ok else "FAILED")

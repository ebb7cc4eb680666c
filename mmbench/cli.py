"""The `mmbench` command line: `list` and `run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmbench import config as config_mod
from mmbench.config import ConfigError, RunConfig
from mmbench.registry import DATASETS, METHODS, PluginError, UnknownNameError, load_plugins

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Benchmark modality-imbalance methods under one honest protocol.")
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console.width = 120
err = Console(stderr=True, highlight=False, soft_wrap=True)

USER_ERRORS = (ConfigError, UnknownNameError, PluginError)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


PluginOpt = Annotated[list[str] | None, typer.Option(
    "--plugin", help="Python file that registers extra methods or datasets (repeatable).")]


@app.command("list")
def list_command(
    kind: Annotated[str, typer.Argument(help="methods, datasets, or all")] = "all",
    plugin: PluginOpt = None,
) -> None:
    """Show the registered methods and datasets with their hyperparameters and defaults."""
    try:
        load_plugins(plugin)
        kinds = {"all": ("methods", "datasets"), "methods": ("methods",), "datasets": ("datasets",),
                 "method": ("methods",), "dataset": ("datasets",)}
        if kind not in kinds:
            fail(f"mmbench list {kind!r}: choose methods, datasets or all")
        for which in kinds[kind]:
            console.print(_registry_table(which))
    except USER_ERRORS as exc:
        fail(str(exc))


def _registry_table(which: str) -> Table:
    registry = METHODS if which == "methods" else DATASETS
    table = Table(title=f"{which} ({len(registry.names())})", show_lines=True, title_justify="left")
    knob_header = "hyperparameters (default)" if which == "methods" else "settings (default)"
    for column in ("name", "description", "citation", knob_header):
        table.add_column(column, overflow="fold")
    for name, cls in registry.items():
        knobs = cls.hparams if which == "methods" else cls.params
        table.add_row(*(escape(text) for text in (name, cls.description, cls.citation,
                                                  _describe_knobs(cls, knobs))))
    return table


def _describe_knobs(cls: type, knobs: dict[str, Any]) -> str:
    lines = []
    for key, default in knobs.items():
        choices = cls.choices.get(key)
        line = f"{key}={default}" + (f" ({'|'.join(map(str, choices))})" if choices else "")
        per_dataset = {d: v[key] for d, v in getattr(cls, "dataset_hparams", {}).items() if key in v}
        if per_dataset:
            line += " [" + ", ".join(f"{d}: {v}" for d, v in per_dataset.items()) + "]"
        if key in cls.help:
            line += f": {cls.help[key]}"
        lines.append(line)
    profiles = sorted(getattr(cls, "profiles", {}))
    if profiles:
        lines.append("profiles: benchmark, " + ", ".join(profiles))
    protocol = getattr(cls, "defaults", {})
    if protocol:
        lines.append("benchmark protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()))
    return "\n".join(lines) or "-"


@app.command("run")
def run_command(
    method: Annotated[str | None, typer.Option("--method", "-m",
                      help="Method name, or several separated by commas.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset name.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, e.g. 0,1,2 or 0-4 [default: 0,1,2].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the number of epochs.")] = None,
    profile: Annotated[str | None, typer.Option(help="benchmark (shared protocol) or official.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s",
                    help="key=value override, highest precedence (repeatable).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    plugin: PluginOpt = None,
) -> None:
    """Train and evaluate METHOD on DATASET for each seed; finished runs are not recomputed."""
    try:
        load_plugins(plugin)
        configs = _configs(method, dataset, seeds, epochs, profile, config, set_, device)
    except USER_ERRORS as exc:
        fail(str(exc))
    failures = _execute(configs, out)
    _print_summary(configs, out)
    if failures:
        err.print(f"{len(failures)} of {len(configs)} runs failed:")
        for cfg, message in failures:
            err.print(f"  {cfg.method} seed {cfg.seed}: {message}")
        raise typer.Exit(1)


def _configs(method: str | None, dataset: str | None, seeds: str | None, epochs: int | None,
             profile: str | None, config: Path | None, sets: list[str] | None,
             device: str | None) -> list[RunConfig]:
    overrides = config_mod.load_yaml(config)
    method = method or overrides.pop("method", None)
    dataset = dataset or overrides.pop("dataset", None) or "synthetic"
    seed_list = config_mod.parse_seeds(seeds if seeds is not None else overrides.pop("seeds", "0,1,2"))
    profile = profile or overrides.pop("profile", "benchmark")
    for key in ("method", "dataset", "seeds"):
        overrides.pop(key, None)
    if not method:
        raise ConfigError("no method given: use --method NAME (see `mmbench list methods`)")
    overrides.update(config_mod.parse_sets(sets))
    if epochs is not None:
        overrides["epochs"] = epochs
    if device is not None:
        overrides["device"] = device
    methods = config_mod.normalized_names(method)
    return config_mod.expand(methods, dataset, seed_list, profile, overrides)


def _execute(configs: list[RunConfig], out: Path) -> list[tuple[RunConfig, str]]:
    from mmbench import engine
    from mmbench.progress import make_reporter
    from mmbench.results import is_done, run_paths

    try:
        engine.select_device(configs[0].device)
    except engine.RunFailed as exc:
        fail(str(exc))
    failures = []
    for cfg in configs:
        paths = run_paths(out, cfg)
        if is_done(paths):
            console.print(f"{cfg.method} seed {cfg.seed}: already done ({paths.row})", markup=False)
            continue
        reporter = make_reporter(console)
        try:
            row = engine.run(cfg, out, reporter)
        except engine.RunFailed as exc:
            getattr(reporter, "close", lambda: None)()
            err.print(f"[bold red]failed:[/] {cfg.method} seed {cfg.seed}: {exc} "
                      f"(recorded in {paths.failed})", markup=True, highlight=False)
            failures.append((cfg, str(exc)))
            continue
        except KeyboardInterrupt:
            getattr(reporter, "close", lambda: None)()
            err.print(f"interrupted: {cfg.method} seed {cfg.seed} resumes from its last finished "
                      "epoch when you run the same command again")
            raise typer.Exit(130) from None
        console.print(f"{cfg.method} seed {cfg.seed}: test acc {row['best_val_acc']:.4f} "
                      f"(best-val epoch {row['best_val_epoch']}), final {row['final_acc']:.4f}, "
                      f"{row['wall_s']:.0f}s -> {paths.row}", markup=False)
    return failures


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna().astype(float) * 100
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _print_summary(configs: list[RunConfig], out: Path) -> None:
    from mmbench.results import read_runs

    rows = read_runs(out)
    if rows.empty:
        return
    rows = rows[rows["run_id"].isin({cfg.run_id for cfg in configs})]
    if rows.empty:
        return
    dataset = configs[0].dataset
    table = Table(title=f"{dataset}: test accuracy (%) over seeds, mean ± sd", title_justify="left")
    for column in ("method", "seeds", "acc (best val)", "audio", "visual", "acc (final)",
                   "max over epochs*"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, group in rows.groupby("method", sort=False):
        table.add_row(method, str(len(group)), _mean_sd(group["best_val_acc"]),
                      _mean_sd(group["best_val_acc_head_a"]), _mean_sd(group["best_val_acc_head_v"]),
                      _mean_sd(group["final_acc"]), _mean_sd(group["paper_max_acc"]))
    console.print(table)
    console.print("audio/visual: each modality's own logits (concat: its half of the fusion layer). "
                  "*max over epochs = the papers' test-set selection, optimistic; not for comparisons.")
    console.print(f"results: {out.resolve()}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The `mmbench` command line: `list`, `run`, `sweep`, `prepare`, `fixtures`, `report`, `check`."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmbench import config as config_mod
from mmbench.config import ConfigError, DataError, RunConfig
from mmbench.registry import DATASETS, PluginError, UnknownNameError, load_plugins

if TYPE_CHECKING:
    pass

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Benchmark modality-imbalance methods under one honest protocol.")
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console.width = 120
err = Console(stderr=True, highlight=False, soft_wrap=True)

USER_ERRORS = (ConfigError, UnknownNameError, PluginError, DataError)


def writable_folder(path: Path, option: str) -> None:
    """ConfigError (one line naming the option and the path) unless `path` is, or can become, a folder
    this process can write in: checked before any work starts, not after it."""
    import tempfile

    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{option} {path}: is a file, not a folder; choose a folder")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose another folder "
                          "or fix its permissions") from None


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)  # [a, b] is text
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from mmbench import ENGINE_VERSION, RESULT_SCHEMA_VERSION, __version__

        print(f"mmbench {__version__} (engine {ENGINE_VERSION}, result schema {RESULT_SCHEMA_VERSION})")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Benchmark modality-imbalance methods under one honest protocol."""


PluginOpt = Annotated[list[str] | None, typer.Option(
    "--plugin", help="Python file that registers extra methods or datasets (repeatable).")]
LogOpt = Annotated[str | None, typer.Option(
    "--log", help="Also log each run to tensorboard, wandb or mlflow (several with commas); needs the extra of "
    "that name, e.g. pip install \"mmbench[tensorboard]\". Same as --set log=...")]


BackendOpt = Annotated[str, typer.Option(help="local (this machine), slurm (a job array) or ray (a Ray cluster).")]
JobsOpt = Annotated[int | None, typer.Option(help="Runs at a time on a machine without GPUs [default: 1].")]
GpusOpt = Annotated[str | None, typer.Option(help="GPU ids to use, e.g. 0,1 [default: every visible GPU].")]
RunsPerGpuOpt = Annotated[int | None, typer.Option(help="Runs packed onto each GPU [default: 1].")]
GpuMemOpt = Annotated[float | None, typer.Option(
    help="GB of GPU memory one run needs: each GPU takes as many runs as fit (instead of --runs-per-gpu).")]
RetriesOpt = Annotated[int, typer.Option(help="Times a failed run is started again.")]
SlurmOpt = Annotated[list[str] | None, typer.Option(
    "--slurm", help="SLURM setting KEY=VALUE (repeatable): partition, time_min, gpus_per_task, cpus_per_task, "
    "mem_gb, array_parallelism; any other key goes to sbatch (account=..., qos=...).")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="SLURM: submit and return; run the same command "
                                         "again later to collect.")]
AddressOpt = Annotated[str | None, typer.Option(help="Ray: address of an existing cluster [default: start a local "
                                                "one on 127.0.0.1].")]


@app.command("list")
def list_command(
    kind: Annotated[str, typer.Argument(help="methods, datasets, core (the settings of every run), or all")
                    ] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plugin: PluginOpt = None,
) -> None:
    """Show the registered methods and datasets with their hyperparameters and defaults, and the core
    settings with their types, ranges and choices."""
    from mmbench.listing import core_table, listing, registry_table

    try:
        load_plugins(plugin)
        kinds = {"all": ("methods", "datasets", "core"), "methods": ("methods",), "datasets": ("datasets",),
                 "method": ("methods",), "dataset": ("datasets",), "core": ("core",)}
        if kind not in kinds:
            fail(f"mmbench list {kind!r}: choose methods, datasets, core or all")
        if as_json:
            print(json.dumps({which: listing(which) for which in kinds[kind]}, indent=1, default=str))
            return
        for which in kinds[kind]:
            console.print(core_table() if which == "core" else registry_table(which))
    except USER_ERRORS as exc:
        fail(str(exc))


@app.command("run")
def run_command(
    method: Annotated[str | None, typer.Option("--method", "-m",
                      help="Method name, or several separated by commas.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset name.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, e.g. 0,1,2 or 0-4 [default: 0,1,2].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the number of epochs.")] = None,
    profile: Annotated[str | None, typer.Option(help="benchmark (shared protocol) or official.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of settings (a run's "
                                                "configs/.../<run_id>.yaml under --out is one).")] = None,
    from_run: Annotated[str | None, typer.Option("--from", help="Replay a stored run: its run_id (found under "
                                                 "--out) or its run row (.parquet) / config (.yaml) file; options "
                                                 "given here (--seeds, --set, ...) still apply.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print each resolved config as YAML, "
                                               "saying where each value came from, and run nothing.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s",
                    help="key=value override, highest precedence (repeatable).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    data_root: Annotated[Path | None, typer.Option(
        "--data-root", help="Folder of a dataset on disk (else MMBENCH_DATA or data.root); see `mmbench prepare`.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    backend: BackendOpt = "local", jobs: JobsOpt = None, gpus: GpusOpt = None, runs_per_gpu: RunsPerGpuOpt = None,
    gpu_mem: GpuMemOpt = None, retries: RetriesOpt = 0, slurm: SlurmOpt = None, no_wait: NoWaitOpt = False,
    address: AddressOpt = None,
    log: LogOpt = None,
    plugin: PluginOpt = None,
) -> None:
    """Train and evaluate METHOD on DATASET for each seed; finished runs are not recomputed.

    Runs go one at a time, each with its epochs shown (several runs: each in its own process, so that
    one that crashes stops nothing else); several at a time (--jobs, several GPUs, --backend
    slurm|ray) go through the same scheduler as `mmbench sweep`."""
    try:
        load_plugins(plugin)
        if data_root is not None and "root" not in DATASETS.info(dataset or "synthetic").params:
            raise ConfigError(f"--data-root: dataset {dataset or 'synthetic'} is generated in memory and reads "
                              "no files; drop --data-root")
        extra = [f"root={data_root}"] if data_root is not None else []
        extra += [f"log={log}"] if log is not None else []
        if from_run is not None and config is not None:
            raise ConfigError("--from and --config both give the settings; pass one of them")
        stored = _stored_config(from_run, out) if from_run is not None else None
        configs = _configs(method, dataset, seeds, epochs, profile, config, [*(set_ or []), *extra], device, stored)
        if print_config:
            given = stored if stored is not None else config_mod.load_yaml(config)
            source = f"--from {from_run}" if from_run else f"--config {config}"
            _print_configs(configs, given, source, [*(set_ or []), *extra], epochs, device)
            return
        _check_data(configs[0])
        options = _scheduling(backend, jobs, gpus, runs_per_gpu, gpu_mem, retries, slurm, no_wait, address)
        writable_folder(out, "--out")
    except USER_ERRORS as exc:
        fail(str(exc))
    from mmbench.scheduler.backends import one_slot

    if one_slot(options):
        _execute(configs, out, retries, plugin or [])
    else:
        _schedule(configs, out, options, plugin)
    _print_summary(configs, out)


def _scheduling(backend: str, jobs: int | None, gpus: str | None, runs_per_gpu: int | None, gpu_mem: float | None,
                retries: int, slurm: list[str] | None, no_wait: bool, address: str | None) -> Any:
    from mmbench.scheduler.backends import SchedulingOptions, parse_key_values

    options = SchedulingOptions(backend, jobs, _gpu_ids(gpus), runs_per_gpu, gpu_mem, retries,
                                parse_key_values(slurm, "--slurm"), not no_wait, address)
    options.validate()
    return options


def _configs(method: str | None, dataset: str | None, seeds: str | None, epochs: int | None,
             profile: str | None, config: Path | None, sets: list[str] | None,
             device: str | None, stored: dict[str, Any] | None = None) -> list[RunConfig]:
    overrides = dict(stored) if stored is not None else config_mod.load_yaml(config)
    for key in ("method", "dataset"):
        if key in overrides and not isinstance(overrides[key], str):
            raise ConfigError(f"--config {config}: `{key}` must be a name (a string), e.g. {key}: "
                              + ("joint" if key == "method" else "synthetic"))
    if "seed" in overrides and "seeds" in overrides:
        raise ConfigError(f"--config {config}: give `seed` or `seeds`, not both")
    method = method or overrides.pop("method", None)
    dataset = dataset or overrides.pop("dataset", None) or "synthetic"
    stored_seeds = overrides.pop("seeds", overrides.pop("seed", "0,1,2"))  # a run's own config has one `seed`
    seed_list = config_mod.parse_seeds(seeds if seeds is not None else stored_seeds)
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


def _stored_config(source: str, out: Path) -> dict[str, Any]:
    """The settings of a stored run, from its run_id (under `out`), its run row or its config.yaml."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        return config_mod.from_stored(config_mod.read_mapping(path, f"--from {source}"))
    if path.suffix != ".parquet":
        from mmbench.results import migrate_legacy_layout

        migrate_legacy_layout(out)
        matches = sorted(out.glob(f"runs/dataset=*/method=*/{source}.parquet"))
        if not matches:
            raise ConfigError(f"--from {source}: no run {source} under {out} (pass --out, or the run's .parquet "
                              "or .yaml file)")
        path = matches[0]
    if not path.is_file():
        raise ConfigError(f"--from {source}: no such file")
    import pyarrow.parquet as pq

    try:
        stored = json.loads(pq.read_table(path, columns=["config_json"])["config_json"][0].as_py())
    except Exception as exc:  # a foreign or broken file: say which
        raise ConfigError(f"--from {source}: not an mmbench run row ({type(exc).__name__})") from None
    return config_mod.from_stored(stored)


def _print_configs(configs: list[RunConfig], given: dict[str, Any], source: str, sets: list[str],
                   epochs: int | None, device: str | None) -> None:
    """Each distinct config (seeds aside) as YAML with `# from ...` after every value."""
    options = {**({"epochs": epochs} if epochs is not None else {}), **({"device": device} if device else {})}
    layers = [(source, given), ("--set", config_mod.parse_sets(sets)), ("option", options)]
    shown: set[str] = set()
    for cfg in configs:
        key = f"{cfg.method}/{cfg.dataset}"
        if key in shown:
            continue
        shown.add(key)
        where = config_mod.sources(cfg.method, cfg.dataset, cfg.profile, layers)
        seeds = ", ".join(str(c.seed) for c in configs if c.method == cfg.method)
        print(f"# {cfg.method} on {cfg.dataset}, seeds {seeds}; run_id of seed {cfg.seed}: {cfg.run_id}")
        print(config_mod.to_yaml(cfg, where))


def _check_data(cfg: RunConfig) -> None:
    """A dataset on disk must be prepared before any run starts (one clear error, not N failed runs)."""
    cls = DATASETS.get(cfg.dataset)
    # a dataset read from disk imported mmbench.data.prepared (and PyAV, scipy) with its module; a generated one
    # must not pay 4 s for them
    prepared = sys.modules.get("mmbench.data.prepared")
    if prepared is not None and issubclass(cls, prepared.PreparedDataset):
        cls(cfg).locate()


def _execute(configs: list[RunConfig], out: Path, retries: int = 0, plugins: list[str] | None = None) -> None:
    """One run after another in this terminal (mmbench/scheduler/inline.py); exit 1 on failures."""
    from mmbench.scheduler.inline import run_in_order
    from mmbench.train import engine

    try:
        engine.select_device(configs[0].device)
        failures, total = run_in_order(configs, out, console, err, retries, plugins)
    except (engine.RunFailed, ConfigError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if failures:
        _print_summary(configs, out)
        err.print(f"{len(failures)} of {total} runs failed: "
                  + ", ".join(f"{c.method} seed {c.seed}" for c in failures))
        raise typer.Exit(1)


def _schedule(configs: list[RunConfig], out: Path, options: Any, plugins: list[str] | None) -> None:
    """Hand the runs to a backend (local processes, SLURM, Ray), show progress, exit 1 on failures. The runs
    the methods require go first, in waves: a wave starts once the one before has ended."""
    from mmbench.scheduler.backends import make_backend
    from mmbench.scheduler.display import SweepDisplay
    from mmbench.scheduler.waves import run_waves
    from mmbench.train.dependencies import in_waves

    display = SweepDisplay(console)
    try:
        waves = in_waves(configs)
        backend, where = make_backend(options, out, plugins, display.event)
    except (ConfigError, ImportError) as exc:
        fail(str(exc))
    console.print(f"running on {where}; one log per run in {out / 'logs'}", markup=False)
    from mmbench.scheduler.slurm import SlurmError

    try:
        with display:
            summary, waiting = run_waves(backend, waves, out, on_tick=display.tick)
    except SlurmError as exc:
        fail(str(exc))
    if summary.detached:
        pending = summary.total - summary.done - summary.skipped - len(summary.failed) - waiting
        console.print(f"{pending} runs are queued or running in SLURM, {summary.done + summary.skipped} done"
                      + (f", {waiting} wait for runs they require" if waiting else "")
                      + "; run the same command again to wait for and collect them (finished runs are not "
                      "submitted again)", markup=False)
        if summary.interrupted:
            raise typer.Exit(130)
        return
    console.print(f"sweep: {summary.done} runs finished now, {summary.skipped} were already done, "
                  f"{len(summary.failed)} failed" + (", interrupted" if summary.interrupted else ""), markup=False)
    for cfg, reason, log in summary.failed:
        err.print(f"  failed: {cfg.method} {cfg.dataset} seed {cfg.seed}: {reason}; log: {log}")
    if summary.interrupted:
        err.print("interrupted: finished runs are kept; run the same command again to continue")
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


@app.command("sweep")
def sweep_command(
    sweep_file: Annotated[Path, typer.Argument(help="YAML: methods, datasets, seeds, optional profile, set, grid.")],
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    backend: BackendOpt = "local", jobs: JobsOpt = None, gpus: GpusOpt = None, runs_per_gpu: RunsPerGpuOpt = None,
    gpu_mem: GpuMemOpt = None, retries: RetriesOpt = 0, slurm: SlurmOpt = None, no_wait: NoWaitOpt = False,
    address: AddressOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and which are done; run nothing.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="key=value for every run (repeatable).")
                    ] = None,
    log: LogOpt = None,
    plugin: PluginOpt = None,
) -> None:
    """Run a grid of methods x datasets x hyperparameters x seeds, each run in its own process."""
    try:
        load_plugins(plugin)
        sweep = config_mod.SweepConfig.load(sweep_file, config_mod.parse_sets([*(set_ or []),
                                                                             *([f"log={log}"] if log else [])]))
        configs = sweep.expand()
        options = _scheduling(backend, jobs, gpus, runs_per_gpu, gpu_mem, retries, slurm, no_wait, address)
        if options.backend == "slurm":  # the file's settings, then the command line's
            options = dataclasses.replace(options, slurm={**sweep.slurm, **options.slurm})
            options.validate()
        for cfg in {c.dataset: c for c in configs}.values():
            _check_data(cfg)
        if not dry_run:
            writable_folder(out, "--out")
    except USER_ERRORS as exc:
        fail(str(exc))
    from mmbench.results import is_done, run_paths
    from mmbench.train.dependencies import in_waves, required_by

    try:
        everything, notes = [cfg for wave in in_waves(configs) for cfg in wave], required_by(configs)
    except ConfigError as exc:
        fail(str(exc))
    done = [is_done(run_paths(out, cfg)) for cfg in everything]
    required = f" and {len(everything) - len(configs)} runs they require" if len(everything) > len(configs) else ""
    console.print(f"{len(configs)} runs{required}, {sum(done)} already done ({sweep_file})", markup=False)
    if dry_run:
        table = Table(title_justify="left")
        for column in ("dataset", "method", "seed", "settings", "run_id", "status"):
            table.add_column(column)
        for cfg, finished in zip(everything, done, strict=True):
            axes = {**sweep.grid.get("*", {}), **sweep.grid.get(cfg.method, {})}
            grid = {k: cfg.hparams.get(k, getattr(cfg, k, cfg.data.get(k))) for k in axes}
            settings = json.dumps(grid) if grid else "-"
            if cfg.run_id in notes:
                settings = f"{json.dumps(cfg.hparams)} ({notes[cfg.run_id]})"
            table.add_row(cfg.dataset, cfg.method, str(cfg.seed), escape(settings), cfg.run_id,
                          "done" if finished else "to run")
        console.print(table)
        return
    _schedule(configs, out, options, plugin)


def _gpu_ids(text: str | None) -> list[str] | None:
    if text is None:
        return None
    ids = [g.strip() for g in text.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise ConfigError(f"--gpus {text!r}: expected GPU ids like 0,1")
    return ids


@app.command("prepare")
def prepare_command(
    dataset: Annotated[str, typer.Argument(help="Dataset name, e.g. cremad or kinetics-sounds.")],
    root: Annotated[Path | None, typer.Option("--data-root", "--root", help="The dataset folder (else MMBENCH_DATA or "
                                              "data.root); the same option as `run --data-root`.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML of dataset settings (the `data:` keys of a run "
                                                "config are accepted as they are).")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Where caches live [default: MMBENCH_CACHE, else ~/.cache/mmbench].")] = None,
    jobs: Annotated[int | None, typer.Option(help="Decoding processes [default: the cores this process may use].")
                    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on the first bad clip instead of skipping it.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Dataset setting key=value (repeatable), "
                                                   "e.g. audio_frontend=fbank; see `mmbench list datasets`.")] = None,
    plugin: PluginOpt = None,
) -> None:
    """Decode every clip of DATASET once into the feature cache that runs read (resumable; a no-op when done)."""
    from mmbench.data.prepared import PreparedDataset
    from mmbench.data.preparing import prepare

    try:
        load_plugins(plugin)
        cls = DATASETS.get(dataset)
        if not issubclass(cls, PreparedDataset):
            raise ConfigError(f"dataset {cls.name} is generated in memory: it needs no `mmbench prepare`")
        overrides = {k: v for k, v in config_mod.load_yaml(config).items()
                     if k.split(".")[-1] in cls.params}  # a run config's method keys are not prepare's business
        overrides.update(config_mod.parse_sets(set_))
        if root is not None:
            overrides["root"] = str(root)
        if cache is not None:
            overrides["cache"] = str(cache)
        params = config_mod.resolve("joint", cls.name, overrides=overrides).data
        if jobs is None:
            from mmbench.cpus import available_cpus

            jobs = available_cpus()
        if jobs < 1:
            raise ConfigError(f"--jobs {jobs}: must be at least 1")
        from mmbench.data.cache import default_cache_root

        writable_folder(Path(params["cache"]).expanduser() if params.get("cache") else default_cache_root(), "--cache")
        prepare(cls, params, jobs, strict, console)
    except USER_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted: decoded shards are kept; run the same command again to continue")
        raise typer.Exit(130) from None


@app.command("fixtures")
def fixtures_command(
    dataset: Annotated[str, typer.Argument(help="cremad or kinetics-sounds.")],
    layout: Annotated[str, typer.Option(help="A layout of docs/layouts.md, e.g. raw, ogm-ge, balancebench.")],
    out: Annotated[Path, typer.Option(help="Folder to create (must be empty or absent).")],
    clips: Annotated[int, typer.Option(help="Number of clips.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the generated content.")] = 0,
) -> None:
    """Write a small dataset in a real on-disk layout, to try `mmbench prepare` and `run` on."""
    from mmbench.data import fixtures

    try:
        name = DATASETS.info(dataset).name
        if name not in fixtures.LAYOUTS or layout not in fixtures.LAYOUTS[name]:
            known = {d: ", ".join(v) for d, v in fixtures.LAYOUTS.items()}
            raise ConfigError(f"--layout {layout}: layouts for {name}: {known.get(name, 'none')}")
        if clips < 2:
            raise ConfigError(f"--clips {clips}: need at least 2")
        writable_folder(out.parent, "--out")
        fixtures.write_fixture(name, layout, out, clips=clips, seed=seed)
    except (ValueError, *USER_ERRORS) as exc:
        fail(str(exc))
    console.print(f"wrote {clips} {name} clips in the {layout} layout to {out}; "
                  f"next: mmbench prepare {name} --data-root {out}", markup=False)


@app.command("report")
def report_command(
    results: Annotated[list[Path] | None, typer.Argument(help="Results folders [default: results].")] = None,
    baseline: Annotated[str, typer.Option(help="Method every other method is compared with.")] = "joint",
    metric: Annotated[str, typer.Option(help="acc, macro_f1 or map.")] = "acc",
    selection: Annotated[str, typer.Option(help="best-val (honest), final, or paper (max over epochs).")] = "best-val",
    format_: Annotated[str, typer.Option("--format", help="Comma-separated: terminal, md, tex, html, json "
                                         "(report.json is always written).")] = "terminal,md,html",
    primary: Annotated[str, typer.Option(help="The pre-registered endpoint METRIC@SELECTION whose tests are "
                                         "confirmatory; a report of any other --metric/--selection is marked "
                                         "exploratory.")] = "acc@best-val",
    out: Annotated[Path, typer.Option(help="Folder for report.md/.tex/.html/.json and figures/.")] = Path("report"),
    rope: Annotated[float, typer.Option(help="Region of practical equivalence, in pp.")] = 1.0,
    figures: Annotated[bool, typer.Option(help="Draw the figures.")] = True,
    figure_formats: Annotated[str, typer.Option(help="Comma-separated figure files: png (embedded in the HTML), "
                                                "pdf, svg (for papers).")] = "png",
    resample_test: Annotated[bool, typer.Option("--resample-test", help="Also give Δ intervals that resample "
                                                "the test clips (bootstrap, the same clips for every method) "
                                                "as well as the seeds.")] = False,
    where: Annotated[list[str] | None, typer.Option("--where", help="Only runs with this setting, KEY=VALUE "
                                                    "(repeatable; e.g. epochs=100, method=joint).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave out runs with this setting, "
                                                      "KEY=VALUE (repeatable; e.g. lr=0.05).")] = None,
) -> None:
    """Tables and figures with significance tests over seeds, from one or more results folders."""
    from mmbench.analysis import render
    from mmbench.analysis import report as report_mod

    formats = tuple(f.strip() for f in format_.split(",") if f.strip())
    try:
        unknown = [f for f in formats if f not in (*render.FORMATS, "json")]
        if unknown or not formats:
            raise ConfigError(f"--format {format_}: choose from {', '.join(render.FORMATS)}, json")
        p_metric, _, p_selection = primary.partition("@")
        if p_metric not in report_mod.METRICS or p_selection not in report_mod.SELECTIONS or p_selection == "paper":
            raise ConfigError(f"--primary {primary}: expected METRIC@SELECTION with METRIC one of "
                              f"{', '.join(report_mod.METRICS)} and SELECTION best-val or final")
        if selection not in report_mod.SELECTIONS:
            raise ConfigError(f"--selection {selection}: choose from {', '.join(report_mod.SELECTIONS)}")
        if metric not in report_mod.METRICS:
            raise ConfigError(f"--metric {metric}: choose from {', '.join(report_mod.METRICS)}")
        options = report_mod.ReportOptions(baseline=baseline, metric=metric, selection=selection, rope=rope / 100,
                                           primary=primary, resample_test=resample_test)
        if [f for f in formats if f != "terminal"] or figures:
            writable_folder(out, "--out")  # before the statistics, not after them
        figure_files = tuple(f.strip() for f in figure_formats.split(",") if f.strip())
        if not figure_files or set(figure_files) - {"png", "pdf", "svg"}:
            raise ConfigError(f"--figure-formats {figure_formats}: choose from png, pdf, svg")
        runs, epochs = report_mod.load_results(results or [Path("results")], config_mod.parse_sets(where),
                                               config_mod.parse_sets(exclude))
        for line in runs.attrs.get("unreadable", []):
            err.print(line, markup=False)
        if baseline not in set(runs["variant"]):
            raise ConfigError(f"--baseline {baseline}: no such method in the results "
                              f"(methods: {', '.join(sorted(set(runs['variant'])))})")
        report = report_mod.build_report(runs, epochs, options)
        files = [f for f in formats if f not in ("terminal", "json")]
        written = render.write_report(report, out, tuple(files), figures=figures and bool(files),
                                          figure_formats=figure_files)
    except (report_mod.ReportError, *USER_ERRORS) as exc:
        fail(str(exc))
    if "terminal" in formats:
        for table in render.rich_tables(report):
            console.print(table)
        for note in report.notes:
            console.print(f"- {note}", markup=False)
    console.print("wrote " + ", ".join(str(p) for p in written.values())
                  + (f" and {len(report.figures)} figures in {out / 'figures'}" if report.figures else ""),
                  markup=False)


@app.command("check")
def check_command(
    baseline: Annotated[Path | None, typer.Option(help="Folder of the baseline (baseline.json) [default: the one "
                                                 "shipped with mmbench for --suite, mmbench/baselines/<suite>].")
                        ] = None,
    suite: Annotated[str, typer.Option(help="Which fixed configuration to run.")] = "ci",
    seeds: Annotated[str | None, typer.Option(help="Seeds per method: a count N (seeds 0..N-1), or a list or "
                                              "range as for `run` (e.g. 25-30, to try the gate on seeds outside "
                                              "the baseline) [default: the suite's: 6 per method, 12 for arm].")
                     ] = None,
    update: Annotated[bool, typer.Option("--update", help="Re-run --ref-seeds seeds per method and rewrite the "
                                         "baseline, saying what changed.")] = False,
    ref_seeds: Annotated[int, typer.Option(help="Seeds per method in a baseline written by --update.")] = 20,
    methods: Annotated[str | None, typer.Option(help="Only these methods, e.g. joint,opm [default: every "
                                                "registered method].")] = None,
    out: Annotated[Path, typer.Option(help="Where the check's runs are kept (finished runs are read, "
                                      "not re-run).")] = Path("results/check"),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="key=value on top of the suite "
                                                   "(e.g. to try a change); turns the exact path off.")] = None,
    plugin: PluginOpt = None,
) -> None:
    """Run every method of a suite on a small fixed configuration and compare its accuracy with a
    committed baseline; exits 1 when a method regressed (docs/statistics.md §7)."""
    from mmbench.analysis import check
    from mmbench.train.dependencies import in_waves

    baseline = baseline or check.BASELINES / suite
    try:
        load_plugins(plugin)
        seed_list = _check_seeds(seeds) if seeds is not None else None
        if ref_seeds < 2:
            raise ConfigError("--ref-seeds must be at least 2")
        if update and set_:
            raise ConfigError("--update records the suite's own settings; drop --set")
        names = config_mod.normalized_names(methods) if methods else None
        overrides = config_mod.parse_sets(set_)
        base = None if update else check.load_baseline(baseline, suite)
        configs = check.suite_configs(suite, list(range(ref_seeds)) if update else seed_list, names, overrides)
    except USER_ERRORS as exc:
        fail(str(exc))
    env = check.environment(next(iter(configs.values()))[0].num_threads)
    asked = sum(len(c) for c in configs.values())
    total = sum(len(wave) for wave in in_waves([cfg for cfgs in configs.values() for cfg in cfgs]))
    required = f" (and {total - asked} runs they require)" if total > asked else ""
    console.print(f"check: suite {suite}, {len(configs)} methods, {asked} runs{required}; runs in {out}",
                  markup=False)
    counts = {"trained": 0, "done": 0}

    def on_run(cfg: RunConfig, outcome: str) -> None:
        counts[outcome] = counts.get(outcome, 0) + 1
        done = sum(counts.values())
        console.print(f"[{done}/{total}] {cfg.method} seed {cfg.seed}: {outcome} ({time.time() - started:.0f} s)",
                      markup=False)

    started = time.time()
    try:
        results = check.run_suite(configs, out, on_run)
    except RuntimeError as exc:
        fail(str(exc), code=1)
    console.print(f"{counts['trained']} runs trained, {counts['done']} read from {out} "
                  f"({time.time() - started:.0f} s)", markup=False)
    if update:
        check.write_baseline(baseline, suite, results, configs, env, console)
        return
    changes = check.environment_changes(base["environment"], env)
    if changes:
        console.print("environment differs from the baseline's (" + "; ".join(changes) + "): a method passes "
                      "exactly only where every seed's predictions still match; the others go through the "
                      "statistical test", markup=False)
    # A per-seed prediction-hash match proves itself, whatever the environment key says.
    verdicts = check.compare(base, results, exact_allowed=not overrides, margin=base.get("margin", check.MARGIN))
    check.print_verdicts(verdicts, base, console)
    regressed = [v.method for v in verdicts if v.failed]
    if regressed:
        err.print(f"[bold red]regression:[/] {', '.join(regressed)} fell below the baseline "
                  "(one-sided rank-sum and paired tests, Holm over the methods)", markup=True, highlight=False)
        raise typer.Exit(1)


def _check_seeds(text: str) -> list[int]:
    """`5` -> seeds 0..4; `25-29` or `0,3,7` -> those seeds."""
    text = text.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ConfigError("--seeds must be at least 1 (a count), or a list or range such as 25-29")
        return list(range(int(text)))
    return config_mod.parse_seeds(text)


def _print_summary(configs: list[RunConfig], out: Path) -> None:
    from mmbench.analysis.summary import NOTE, seed_summary
    from mmbench.results import read_runs

    rows = read_runs(out)
    for line in rows.attrs["unreadable"]:
        err.print(line, markup=False)
    rows = rows[rows["run_id"].isin({cfg.run_id for cfg in configs})] if not rows.empty else rows
    if rows.empty:
        return
    console.print(seed_summary(rows, configs[0].dataset))
    console.print(NOTE)
    console.print(f"results: {out.resolve()}")


def main() -> None:
    import signal

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SLURM and `kill` send SIGTERM: stop as on Ctrl-C, keeping what is written

    signal.signal(signal.SIGTERM, terminated)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

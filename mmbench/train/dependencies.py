"""Runs that need other finished runs: which ones, and in which order to run a list of runs.

A method declares the runs it loads (`Method.requires`, e.g. a unimodal teacher per modality). A required
run is the requiring run's config with the method and its hyperparameters replaced: same seed, dataset,
profile and core settings (epochs, optimiser, ...), so that teacher and student follow one protocol. It
keeps its selected weights (`keep_weights`), which the requiring run loads through `ctx.load_run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmbench.config import _CORE_TYPES, CORE_FIELDS, EXECUTION_KEYS, ConfigError, RunConfig, _choices_of, coerce
from mmbench.registry import METHODS

_NOT_SETTABLE = frozenset({"method", "dataset", "seed", "profile", "hparams", "data"}) | EXECUTION_KEYS


def required_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The configs of the runs `cfg` loads, by the key its method names them with."""
    method_cls = METHODS.get(cfg.method)
    return {key: _required_config(cfg, key, dict(spec)) for key, spec in method_cls.required_runs(cfg).items()}


def _required_config(cfg: RunConfig, key: str, spec: dict) -> RunConfig:
    where = f"method {cfg.method} requires run {key!r}"
    if "method" not in spec:
        raise ConfigError(f"{where} without a method; name one, e.g. {{'method': 'unimodal'}}")
    method_cls = METHODS.info(spec.pop("method"))
    hparams = {**method_cls.hparams, **method_cls.dataset_hparams.get(cfg.dataset, {})}
    core = {}
    for name, value in spec.items():
        if name in method_cls.hparams:
            hparams[name] = coerce(name, value, method_cls.hparams[name], method_cls.choices.get(name))
        elif name in CORE_FIELDS and name not in _NOT_SETTABLE:
            core[name] = coerce(name, value, CORE_FIELDS[name].default, _choices_of(_CORE_TYPES[name]))
        else:
            raise ConfigError(f"{where} with {name}={value!r}, which is neither a hyperparameter of "
                              f"{method_cls.name} nor a core setting it may change")
    required = dataclasses.replace(cfg, method=method_cls.name, hparams=hparams, keep_weights=True, **core)
    METHODS.get(method_cls.name).check_config(required)
    return required


def in_waves(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """`configs` and every run they require (transitively), each once, in waves: a run comes in a later
    wave than every run it requires; within a wave in the order given (required runs before the run
    that first requires them). A run both asked for and required keeps its weights."""
    chosen: dict[str, RunConfig] = {}
    depth: dict[str, int] = {}

    def visit(cfg: RunConfig, path: tuple[str, ...]) -> int:
        if cfg.run_id in path:
            raise ConfigError(f"method {cfg.method} requires itself through the runs it requires; "
                              "break the cycle in the methods' `requires`")
        required = list(required_configs(cfg).values())
        level = 1 + max((visit(r, (*path, cfg.run_id)) for r in required), default=-1)
        known = chosen.get(cfg.run_id)
        keep = cfg.keep_weights or (known is not None and known.keep_weights)
        chosen[cfg.run_id] = dataclasses.replace(known or cfg, keep_weights=keep)
        depth[cfg.run_id] = max(level, depth.get(cfg.run_id, 0))
        return depth[cfg.run_id]

    for cfg in configs:
        visit(cfg, ())
    waves: list[list[RunConfig]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for run_id, cfg in chosen.items():
        waves[depth[run_id]].append(cfg)
    return waves


def required_by(configs: list[RunConfig]) -> dict[str, str]:
    """For each run required by one of `configs`: a short note saying which, e.g. "teacher_a of umt"."""
    notes: dict[str, str] = {}
    for wave in in_waves(configs):
        for cfg in wave:
            for key, required in required_configs(cfg).items():
                notes.setdefault(required.run_id, f"{key} of {cfg.method}")
    return notes


def blocked(cfg: RunConfig, out: Path) -> str | None:
    """Why `cfg` cannot run yet (one line naming the first unfinished run it requires), or None."""
    from mmbench.results import is_done, run_paths

    for key, required in required_configs(cfg).items():
        paths = run_paths(out, required)
        if not is_done(paths):
            why = f"it failed (see {paths.failed})" if paths.failed.exists() else "it has not finished"
            return (f"the run it requires as {key} ({required.method} seed {required.seed}, "
                    f"{required.run_id}) did not finish with its weights: {why}")
    return None


def record_blocked(out: Path, cfg: RunConfig, reason: str) -> None:
    """`failed/.../<run_id>.json` for a run that did not start because a run it requires did not finish."""
    from datetime import datetime, timezone

    from mmbench.results import run_paths, write_json

    write_json(run_paths(out, cfg).failed, {"run_id": cfg.run_id, "error": f"not started: {reason}",
                                            "config": cfg.to_dict(), "at": datetime.now(timezone.utc).isoformat()})


def run_in_process(configs: list[RunConfig], out: str | Path, reporter: object | None = None) -> None:
    """Train, in this process and one after another, whatever of `configs` and the runs they require is not
    finished (for scripts and tests; `mmbench run` and `sweep` schedule them). Raises RunFailed when one fails."""
    from mmbench.results import is_done, run_paths
    from mmbench.train import engine

    for wave in in_waves(configs):
        for cfg in wave:
            if not is_done(run_paths(out, cfg)):
                engine.run(cfg, out, reporter)

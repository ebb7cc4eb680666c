"""`mmbench check`: a CI regression gate on method accuracy (docs/statistics.md).

Every method of a suite is trained on a small fixed configuration for a few seeds, and the test
accuracy of its final model (`SELECTION`) is compared with a committed baseline of `N_REF` seeds
per method (`mmbench/baselines/<suite>/baseline.json`, shipped with the package):

1. exact: every seed's test predictions hash to the baseline's for the same seed: pass, with no
   statistics and no flake risk. The match proves itself, so it is accepted whatever the environment
   key (torch, threads, platform, CPU capability) says; a changed key is only reported;
2. otherwise two one-sided tests per method, each asking "are the current seeds lower than the
   baseline by more than `MARGIN`?", combined by Bonferroni (p = 2 min(p_rank, p_paired)):
   - rank: a rank-sum permutation test of the current seeds against all the baseline's seeds
     (`stats.shift_test`). Seeds are draws of one distribution, so with seeds the baseline has not
     seen its level is exact whatever the distribution's shape (one collapsed seed cannot fail a
     method), and rerunning the baseline's own seeds only makes it conservative;
   - paired (common random numbers): a paired t-test of current_i - baseline_i over the seeds both
     ran (`stats.paired_shift_test`). A numerics change (another CPU, another oneDNN path) moves
     most seeds a little, so the differences are far less spread than the seeds themselves;
   Holm's correction over the methods keeps the family-wise false-alarm rate at `ALPHA_FAMILY`.
   docs/statistics.md has the rates measured on trained seeds (benchmarks/check_gate_rates.py);
3. a gain beyond `MARGIN`, significant the same way, passes with a note that the baseline is stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmbench.analysis import stats
from mmbench.config import ConfigError, RunConfig, expand
from mmbench.registry import METHODS

if TYPE_CHECKING:
    from rich.console import Console

FORMAT_VERSION = 3
ALPHA_FAMILY = 0.01
MARGIN = 0.0025  # drops up to a quarter point are not regressions (7.5 of the ci suite's 3000 test clips)
N_REF = 20
N_CI = 6  # seeds per method in a CI run: with 5, a 2-point drop of ogm-ge was caught in 39-87 % of runs
BASELINE_FILE = "baseline.json"
# The committed baselines ship with the package, so `mmbench check` works outside the repository.
BASELINES = Path(__file__).parents[1] / "baselines"

# The `ci` suite: every registered method on a synthetic problem small enough for one CPU thread
# (about 6 s per run) and trained until most methods converge (joint about 96 %, chance 17 %), so
# that seeds spread by about half a point and a 2-point drop stands out from 5 of them
# (docs/statistics.md). The learning rate falls 5x after epoch 7. A method that needs more (arm)
# says so in its `check_suite`.
SUITES: dict[str, dict[str, Any]] = {
    "ci": {"dataset": "synthetic", "settings": {
        "n_train": 1600, "n_test": 3000, "audio_size": 12, "image_size": 12, "visual_strength": 1.5,
        "epochs": 10, "lr_step": 7, "batch_size": 32, "encoder_width": 8, "num_threads": 1,
        "deterministic": True, "device": "cpu"}},
}
# The gate reads the final model's predictions: picking the best epoch on the small validation split
# adds a selection noise of its own. Over seeds 0-19 rerun under another CPU capability, a rerun moved
# joint by 0.45 pp (SD) on best-on-validation and 0.10 pp on final; opm 0.80 and 0.23.
SELECTION = "final"


@dataclass(frozen=True)
class SeedResult:
    seed: int
    acc: float
    n_correct: int
    n_test: int
    preds_sha256: str


@dataclass(frozen=True)
class Verdict:
    method: str
    status: str  # exact | pass | stale | REGRESSED | no baseline
    baseline_mean: float
    current_mean: float
    n: int
    n_ref: int
    test: stats.ShiftTest | None = None
    paired: stats.PairedShiftTest | None = None
    p_holm: float = math.nan  # Holm-adjusted 2 min(p_rank, p_paired)

    @property
    def failed(self) -> bool:
        return self.status == "REGRESSED"


def environment(threads: int) -> dict[str, str]:
    """What decides whether two runs can be bit-identical (STATS §6.1)."""
    import torch

    return {"torch": torch.__version__, "threads": str(threads), "python": platform.python_version(),
            "platform": f"{platform.system()}-{platform.machine()}",
            "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}


def ci_seed_count(suite: str, method: str) -> int:
    """Seeds per method in a CI run of the suite (N_CI, or more for a method whose seeds spread widely)."""
    return METHODS.info(method).check_suite.get("ci_seeds", N_CI)


def _method_settings(method: str) -> dict[str, Any]:
    return {k: v for k, v in METHODS.info(method).check_suite.items() if k != "ci_seeds"}


def suite_settings(suite: str) -> dict[str, Any]:
    """The suite's settings as a baseline records them: with each method's own (`arm.epochs`), so that
    a change to a method's `check_suite` invalidates the baseline."""
    return {**SUITES[suite]["settings"],
            **{f"{m}.{k}": v for m in METHODS.names() for k, v in _method_settings(m).items()}}


def suite_configs(suite: str, seeds: list[int] | None, methods: list[str] | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, list[RunConfig]]:
    """Each method's runs; `seeds` None means the suite's CI seeds (0 .. ci_seed_count - 1)."""
    if suite not in SUITES:
        raise ConfigError(f"--suite {suite}: no such suite; choices: {', '.join(SUITES)}")
    spec = SUITES[suite]
    names = methods or METHODS.names()
    overrides = overrides or {}
    configs = {}
    for m in names:
        # A key the user sets for every method also replaces the method's own suite value.
        own = {k: v for k, v in _method_settings(m).items() if k not in overrides}
        configs[m] = expand([m], spec["dataset"], list(range(ci_seed_count(suite, m))) if seeds is None else seeds,
                            "benchmark", {**spec["settings"], **own, **overrides})
    return configs


def run_suite(configs: dict[str, list[RunConfig]], out: Path, on_run: Callable[[RunConfig, str], None]
              ) -> dict[str, list[SeedResult]]:
    """Train what is missing (one after another, in this process; the runs that methods require first)
    and read every seed's result."""
    from mmbench.scheduler.worker import execute
    from mmbench.train.dependencies import in_waves
    from mmbench.train.progress import PlainReporter

    quiet = PlainReporter(_null_console())
    for wave in in_waves([cfg for cfgs in configs.values() for cfg in cfgs]):
        for cfg in wave:
            outcome = execute(cfg, out, quiet)
            on_run(cfg, outcome)
            if outcome == "failed":
                raise RuntimeError(f"{cfg.method} seed {cfg.seed} failed; see {out}")
    return {method: [seed_result(out, cfg) for cfg in cfgs] for method, cfgs in configs.items()}


def seed_result(out: Path, cfg: RunConfig) -> SeedResult:
    from mmbench.results import run_paths

    paths = run_paths(out, cfg)
    preds = pd.read_parquet(paths.preds, columns=["selection", "sample_id", "y", "pred"])
    preds = preds[preds["selection"] == SELECTION].sort_values("sample_id")
    digest = hashlib.sha256(preds["pred"].to_numpy(np.int64).tobytes()).hexdigest()
    n_correct = int((preds["pred"] == preds["y"]).sum())
    return SeedResult(cfg.seed, n_correct / len(preds), n_correct, len(preds), digest)


def compare(baseline: dict[str, Any], current: dict[str, list[SeedResult]], exact_allowed: bool,
            alpha_family: float = ALPHA_FAMILY, margin: float = MARGIN) -> list[Verdict]:
    """One verdict per method; Holm over the methods that needed the statistical test."""
    verdicts, tested = [], []
    for method, results in current.items():
        ref = baseline["methods"].get(method)
        accs = [r.acc for r in results]
        if ref is None:
            verdicts.append(Verdict(method, "no baseline", math.nan, float(np.median(accs)), len(accs), 0))
            continue
        by_seed = dict(zip(ref["seeds"], ref["preds_sha256"], strict=True))
        if exact_allowed and all(by_seed.get(r.seed) == r.preds_sha256 for r in results):
            same_seeds = dict(zip(ref["seeds"], ref["acc"], strict=True))  # the baseline over these very seeds
            verdicts.append(Verdict(method, "exact", float(np.median([same_seeds[r.seed] for r in results])),
                                    float(np.median(accs)), len(accs), len(accs)))
            continue
        tested.append(len(verdicts))
        verdicts.append(Verdict(method, "pass", float(np.median(ref["acc"])), float(np.median(accs)), len(accs),
                                len(ref["acc"])))
    if not tested:
        return verdicts
    tests = [_method_tests(current[verdicts[i].method], baseline["methods"][verdicts[i].method], margin)
             for i in tested]
    adjusted = stats.holm([p for _rank, _paired, p, _gain in tests])
    for i, (rank, paired, _p, p_gain), p_holm in zip(tested, tests, adjusted, strict=True):
        status = "REGRESSED" if p_holm < alpha_family else "stale" if p_gain < alpha_family else "pass"
        verdicts[i] = dataclasses.replace(verdicts[i], status=status, test=rank, paired=paired,
                                          p_holm=float(p_holm))
    return verdicts


def _method_tests(results: list[SeedResult], ref: dict[str, Any], margin: float
                  ) -> tuple[stats.ShiftTest, stats.PairedShiftTest | None, float, float]:
    """The rank test, the paired test where seeds pair up, and their Bonferroni-combined p (drop, gain)."""
    rank = stats.shift_test([r.acc for r in results], ref["acc"], margin)
    by_seed = dict(zip(ref["seeds"], ref["acc"], strict=True))
    common = [r for r in results if r.seed in by_seed]
    paired = stats.paired_shift_test([r.acc for r in common], [by_seed[r.seed] for r in common], margin)
    if paired is None:
        return rank, None, rank.p, rank.p_gain
    return rank, paired, min(1.0, 2 * min(rank.p, paired.p)), min(1.0, 2 * min(rank.p_gain, paired.p_gain))


def baseline_payload(suite: str, results: dict[str, list[SeedResult]], configs: dict[str, list[RunConfig]],
                     env: dict[str, str]) -> dict[str, Any]:
    methods = {}
    for method, seeds in results.items():
        accs = [r.acc for r in seeds]
        cfg = configs[method][0].to_dict()
        methods[method] = {
            "seeds": [r.seed for r in seeds], "acc": accs, "n_correct": [r.n_correct for r in seeds],
            "n_test": seeds[0].n_test, "preds_sha256": [r.preds_sha256 for r in seeds],
            "mean": float(np.mean(accs)), "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "hparams": cfg["hparams"],
        }
    return {"format": FORMAT_VERSION, "suite": suite, "dataset": SUITES[suite]["dataset"],
            "settings": suite_settings(suite), "environment": env, "alpha_family": ALPHA_FAMILY,
            "margin": MARGIN, "selection": SELECTION,
            "test": "rank-sum permutation and paired t; Bonferroni in a method, Holm over methods",
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "methods": methods}


def load_baseline(folder: Path, suite: str) -> dict[str, Any]:
    path = Path(folder) / BASELINE_FILE
    hint = f"create it with `mmbench check --baseline {folder} --suite {suite} --update`"
    if not path.is_file():
        raise ConfigError(f"--baseline {folder}: no {BASELINE_FILE} there; {hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--baseline: {path} is not valid JSON ({exc}); restore it from git or {hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or "methods" not in data:
        raise ConfigError(f"--baseline: {path} is not a format-{FORMAT_VERSION} mmbench baseline; {hint}")
    if data.get("suite") != suite:
        raise ConfigError(f"--baseline: {path} is for suite {data.get('suite')!r}, not {suite!r}; pass "
                          f"--suite {data.get('suite')} or {hint}")
    if data.get("settings") != suite_settings(suite):
        raise ConfigError(f"--baseline: {path} was made with other {suite} suite settings; {hint}")
    return data


def environment_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return [f"{key} {old.get(key, '?')} -> {new.get(key, '?')}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def _null_console() -> Any:
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


# --- what `mmbench check` prints and writes -------------------------------------------------------

def settings_of(settings: dict[str, Any], method: str) -> dict[str, Any]:
    """What of a suite's recorded settings applies to `method`: the shared ones and its own (`arm.epochs`)."""
    return {k: v for k, v in settings.items() if "." not in k or k.startswith(f"{method}.")}


def kept_entries(old_settings: dict[str, Any], new_settings: dict[str, Any], previous: dict[str, Any],
                 rerun: Iterable[str]) -> dict[str, Any]:
    """The baseline entries of methods not re-run whose settings are unchanged (another method's own setting,
    e.g. a new method's, does not touch them)."""
    rerun = set(rerun)
    return {m: entry for m, entry in previous.items()
            if m not in rerun and settings_of(old_settings, m) == settings_of(new_settings, m)}


def write_baseline(folder: Path, suite: str, results: dict[str, list[SeedResult]],
                   configs: dict[str, list[RunConfig]], env: dict[str, str], console: Console) -> None:
    """Write the baseline of `mmbench check --update` (keeping the entries of methods not re-run when the
    suite is the same) and say what changed."""
    from mmbench.results import write_json

    path = folder / BASELINE_FILE
    try:
        old = json.loads(path.read_text())
        previous = old.get("methods", {}) if old.get("suite") == suite else {}
    except (OSError, ValueError, AttributeError):
        old, previous = None, {}
    payload = baseline_payload(suite, results, configs, env)
    same_format = old is not None and old.get("format") == FORMAT_VERSION
    kept = kept_entries(old["settings"], payload["settings"], previous, results) if same_format else {}
    payload["methods"] = {**kept, **payload["methods"]}
    dropped = sorted(set(previous) - set(results) - set(kept))
    if dropped:
        console.print("the suite's settings changed for methods not re-run now; they are dropped from the baseline "
                      f"({', '.join(dropped)})", markup=False)
    write_json(path, payload)
    console.print(f"wrote {path}", markup=False)
    for method, entry in payload["methods"].items():
        before = previous.get(method)
        if method not in results:
            continue
        if before is None:
            console.print(f"  {method}: new, {entry['mean'] * 100:.2f} ± {entry['sd'] * 100:.2f} % over "
                          f"{len(entry['seeds'])} seeds", markup=False)
        elif before["preds_sha256"] == entry["preds_sha256"]:
            console.print(f"  {method}: unchanged (identical predictions)", markup=False)
        else:
            console.print(f"  {method}: {before['mean'] * 100:.2f} -> {entry['mean'] * 100:.2f} % "
                          f"(sd {before['sd'] * 100:.2f} -> {entry['sd'] * 100:.2f})", markup=False)
    if isinstance(old, dict) and isinstance(old.get("environment"), dict):
        for change in environment_changes(old["environment"], env):
            console.print(f"  environment: {change}", markup=False)


def print_verdicts(verdicts: list[Verdict], base: dict[str, Any], console: Console) -> None:
    """The verdicts as a table, with what each column and status means."""
    from rich.table import Table

    table = Table(title=f"mmbench check: test accuracy (%) vs baseline ({base['created']}), suite {base['suite']}",
                  title_justify="left")
    for column in ("method", "baseline median", "current median", "shift", "paired Δ", "p (Holm)", "verdict"):
        table.add_column(column, justify="left" if column in ("method", "verdict") else "right")
    for v in verdicts:
        cells = [v.method, f"{v.baseline_mean * 100:.2f} (n={v.n_ref})", f"{v.current_mean * 100:.2f} (n={v.n})"]
        if v.test is not None:
            paired = f"{v.paired.mean_diff * 100:+.2f} (n={v.paired.n})" if v.paired is not None else "-"
            cells += [f"{v.test.shift * 100:+.2f}", paired, f"{v.p_holm:.3g}"]
        else:
            cells += [f"{(v.current_mean - v.baseline_mean) * 100:+.2f}" if v.status == "exact" else "-", "-", "-"]
        style = {"REGRESSED": "bold red", "stale": "yellow", "no baseline": "yellow"}.get(v.status, "green")
        table.add_row(*cells, f"[{style}]{v.status}[/]")
    console.print(table)
    notes = ["exact: every seed's predictions identical to the baseline's for that seed (no statistics needed)"]
    if any(v.test is not None for v in verdicts):
        margin = next(v.test.margin for v in verdicts if v.test is not None)
        notes.append(f"otherwise two one-sided tests of a drop larger than {margin * 100:g} pp, combined by "
                     "Bonferroni: a rank-sum permutation test against all the baseline's seeds (shift = median of "
                     "current - baseline over all pairs of seeds) and a paired t-test over the seeds the baseline "
                     "also ran (paired Δ = mean of current - baseline, seed by seed); Holm over "
                     f"{tested(verdicts)} methods at a family false-alarm rate of {base['alpha_family']:g}; "
                     "docs/statistics.md")
    if any(v.status == "stale" for v in verdicts):
        notes.append("stale: better than the baseline beyond the margin; run `mmbench check --update`")
    if any(v.status == "no baseline" for v in verdicts):
        notes.append("no baseline: a method the baseline lacks; run `mmbench check --update --methods NAME`")
    for note in notes:
        console.print(note, markup=False)


def tested(verdicts: list[Verdict]) -> int:
    """How many methods Holm covers (at least 1)."""
    return max(1, sum(v.test is not None for v in verdicts))

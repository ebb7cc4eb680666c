"""`mmbench report`: results folders -> significance-tested tables and figures (docs/statistics.md).

The numbers live in one `Report` (also written as report.json); the formats (terminal,
Markdown, LaTeX, HTML) only render it. Seeds are the replicates; methods are compared with
the baseline paired by seed when the stored pairing metadata says the seeds share their
random streams (`crn`, `pair_key`), with Welch's test otherwise; Holm adjusts the p-values
over the family "every method vs the baseline on every dataset".
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mmbench.analysis import stats
from mmbench.config import drop_keys_at_default
from mmbench.results import RunPaths, read_epochs, read_runs

SELECTIONS = {"best-val": "best_val_", "final": "final_", "paper": "paper_max_"}
METRICS = ("acc", "macro_f1", "map")
# Config keys that do not make two runs different variants of a method.
NOT_VARIANT = {"seed", "device", "num_threads"}
LOCATION_KEYS = {"root", "cache", "split_dir"}


class ReportError(ValueError):
    """The results cannot be reported as asked; one line for the user."""


@dataclass(frozen=True)
class ReportOptions:
    baseline: str = "joint"
    metric: str = "acc"
    selection: str = "best-val"
    rope: float = 0.01
    alpha: float = 0.05
    primary: str = "acc@best-val"  # the one (metric, selection) whose tests are confirmatory
    resample_test: bool = False  # also resample the test clips (bootstrap), paired across methods

    @property
    def column(self) -> str:
        return f"{SELECTIONS[self.selection]}{self.metric}"

    @property
    def endpoint(self) -> str:
        return f"{self.metric}@{self.selection}"

    @property
    def tested(self) -> bool:
        """--selection paper picks the epoch on the test set: shown, never tested (docs/statistics.md)."""
        return self.selection != "paper"

    @property
    def exploratory(self) -> bool:
        return self.endpoint != self.primary


@dataclass
class Report:
    options: ReportOptions
    runs: pd.DataFrame
    epochs: pd.DataFrame
    main: pd.DataFrame
    imbalance: pd.DataFrame
    protocol: pd.DataFrame
    across: pd.DataFrame | None
    friedman: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
            if frame is None:
                return []
            return json.loads(frame.to_json(orient="records", double_precision=10))

        return {"options": self.options.__dict__, "n_runs": len(self.runs), "notes": self.notes,
                "main": records(self.main), "imbalance": records(self.imbalance),
                "protocol": records(self.protocol), "across": records(self.across), "friedman": self.friedman,
                "figures": {k: str(v) for k, v in self.figures.items()}}


# --- loading -----------------------------------------------------------------------------------

def _refuse_disagreeing_copies(runs: pd.DataFrame) -> None:
    """One run_id found in two folders counts once, but only if both copies hold the same numbers: on
    a CPU the thread count (not part of the run's identity) changes the last bits of training."""
    copies = runs[runs.duplicated("run_id", keep=False)]
    metrics = [c for c in runs.columns if c.startswith(("final_", "best_val_", "paper_"))
               and pd.api.types.is_numeric_dtype(runs[c])]
    for run_id, group in copies.groupby("run_id", sort=False):
        values = group[metrics].to_numpy(float)
        if not all(np.array_equal(values[0], row, equal_nan=True) for row in values[1:]):
            first, other = group.iloc[0], group.iloc[1]
            raise ReportError(
                f"run {run_id} ({first['method']} seed {first['seed']}) has different results in "
                f"{first['results_folder']} (num_threads {first.get('num_threads')}) and {other['results_folder']} "
                f"(num_threads {other.get('num_threads')}); report one of the folders, or rerun one with the "
                "other's --set num_threads=N")


def load_results(folders: list[Path], where: dict[str, str] | None = None, exclude: dict[str, str] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finished runs of every folder (a run found twice counts once) and their epoch rows; `where` keeps
    the runs whose settings have all the given values, `exclude` drops those with any of them."""
    runs, epochs, unreadable = [], [], []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ReportError(f"{folder}: no such results folder")
        found, found_epochs = read_runs(folder), read_epochs(folder)
        unreadable += found.attrs["unreadable"] + found_epochs.attrs["unreadable"]
        runs.append(found.assign(results_folder=str(folder)) if not found.empty else found)
        epochs.append(found_epochs)
    runs_df = pd.concat([r for r in runs if not r.empty], ignore_index=True) if any(not r.empty for r in runs) \
        else pd.DataFrame()
    if runs_df.empty:
        raise ReportError(f"no finished runs under {', '.join(map(str, folders))} (run `mmbench run` first)"
                          + (f"; {len(unreadable)} unreadable files, e.g. {unreadable[0]}" if unreadable else ""))
    _refuse_disagreeing_copies(runs_df)
    runs_df = runs_df.drop_duplicates("run_id").reset_index(drop=True)
    if "status" in runs_df:
        runs_df = runs_df[runs_df["status"] == "ok"].reset_index(drop=True)
    runs_df = filter_runs(runs_df, where or {}, exclude or {})
    runs_df["variant"] = variant_labels(runs_df)
    epochs_df = pd.concat([e for e in epochs if not e.empty], ignore_index=True) if any(
        not e.empty for e in epochs) else pd.DataFrame()
    if not epochs_df.empty:
        epochs_df = epochs_df.drop_duplicates(["run_id", "epoch"])
        epochs_df = epochs_df.merge(runs_df[["run_id", "dataset", "variant", "seed"]], on="run_id")
        epochs_df["method"] = epochs_df.pop("variant")
    runs_df.attrs["unreadable"] = unreadable
    return runs_df, epochs_df


def filter_runs(runs: pd.DataFrame, where: dict[str, str], exclude: dict[str, str]) -> pd.DataFrame:
    """Keep the runs matching every `where` KEY=VALUE and none of the `exclude` ones. KEY is method,
    dataset, seed or any setting (core key, hyperparameter, data setting); VALUE is read as YAML."""
    if not where and not exclude:
        return runs
    settings = [{"method": m, "dataset": d, **_identity(c), "seed": s}
                for m, d, c, s in zip(runs["method"], runs["dataset"], runs["config_json"], runs["seed"], strict=True)]
    known = set().union(*settings) if settings else set()
    for option, pairs in (("--where", where), ("--exclude", exclude)):
        for key in pairs:
            if key not in known:
                raise ReportError(f"{option} {key}=...: no run has a setting {key!r}; settings: "
                                  f"{', '.join(sorted(known))}")

    def matches(setting: dict[str, Any], key: str, text: str) -> bool:
        value = yaml.safe_load(text)
        return key in setting and (setting[key] == value or str(setting[key]) == text)

    keep = [all(matches(s, k, v) for k, v in where.items()) and not any(matches(s, k, v) for k, v in exclude.items())
            for s in settings]
    kept = runs[keep].reset_index(drop=True)
    if kept.empty:
        raise ReportError("no runs left after --where/--exclude "
                          + ", ".join(f"{k}={v}" for k, v in {**where, **exclude}.items()))
    return kept


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """The method name; where one method ran with several configs on a dataset, the most common one
    keeps the plain name (so one exploratory run does not rename the baseline) and each other one adds
    the settings where it differs from it (e.g. `joint[lr=0.05]`)."""
    configs = [_identity(text) for text in runs["config_json"]]
    labels = runs["method"].astype(str).copy()
    for (_dataset, method), rows in runs.groupby(["dataset", "method"], sort=False).groups.items():
        keyed = [json.dumps(configs[i], sort_keys=True) for i in rows]
        if len(set(keyed)) < 2:
            continue
        counts = pd.Series(keyed).value_counts(sort=False)
        plain = configs[rows[keyed.index(counts.idxmax())]]
        for i in rows:
            differing = sorted(k for k in set(configs[i]) | set(plain) if configs[i].get(k) != plain.get(k))
            if differing:
                labels.iloc[i] = f"{method}[{','.join(f'{k}={configs[i].get(k)}' for k in differing)}]"
    return labels


def protocol_settings(config_json: str, data_prefix: str = "") -> dict[str, Any]:
    """A run's settings outside its method's own hyperparameters: the core keys that decide the numbers
    and the data settings (where the data lives left out), data keys prefixed with `data_prefix`."""
    config = json.loads(config_json)
    flat = {k: v for k, v in config.items() if k not in NOT_VARIANT | {"hparams", "data", "method", "dataset"}}
    drop_keys_at_default(flat)  # a key mmbench added later, at its default, is what older runs did
    flat.update({f"{data_prefix}{k}": v for k, v in config.get("data", {}).items() if k not in LOCATION_KEYS})
    return flat


def _protocol_differences(cell: pd.DataFrame, base: pd.DataFrame) -> str:
    """The settings outside the methods' own hyperparameters (core keys and the data, hence the test set)
    on which two groups of runs differ, e.g. `epochs 2 vs 6; n_train 240 vs 600`; "" when they agree."""
    def settings(frame: pd.DataFrame) -> dict[str, set[str]]:
        values: dict[str, set[str]] = {}
        for text in frame["config_json"]:
            for key, value in protocol_settings(text).items():
                values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
        return values

    mine, theirs = settings(cell), settings(base)
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return "; ".join(f"{k} {'/'.join(sorted(mine.get(k, {'-'})))} vs {'/'.join(sorted(theirs.get(k, {'-'})))}"
                     for k in keys)


def _identity(config_json: str) -> dict[str, Any]:
    config = json.loads(config_json)
    flat = {k: v for k, v in config.items() if k not in NOT_VARIANT | {"hparams", "data"}}
    flat.update(config.get("hparams", {}))
    flat.update({k: v for k, v in config.get("data", {}).items() if k not in LOCATION_KEYS})
    return flat


# --- tables ------------------------------------------------------------------------------------

def build_report(runs: pd.DataFrame, epochs: pd.DataFrame, options: ReportOptions) -> Report:
    if options.column not in runs:
        have = sorted({c.split("_", 2)[-1] for c in runs if c.startswith("best_val_")} & set(METRICS))
        raise ReportError(f"--metric {options.metric} with --selection {options.selection}: column "
                          f"{options.column} is not in the results (metrics there: {', '.join(have)}; "
                          "--selection paper has acc only)")
    notes: list[str] = []
    main = main_table(runs, options, notes)
    notes.extend(_fallback_notes(runs, options))
    calibrated = sorted(v for v, cell in runs.groupby("variant") if calibrates(cell))
    if calibrated:
        notes.append(f"{', '.join(calibrated)}: calibrated on validation after training; the maximum over epochs "
                     "(and --selection paper) is of the uncalibrated model's test accuracy, so the protocol table "
                     "leaves it out")
    if options.resample_test:
        main = resample_test_intervals(runs, main, options, notes)
    across, friedman = across_datasets(main, runs, options, notes)
    order = {m: i for i, m in enumerate(_methods_in_order(runs, options.baseline))}
    imbalance = imbalance_table(runs, options)
    gaps = capability_table(runs, options, notes)
    if not gaps.empty:
        imbalance = imbalance.merge(gaps, on=["dataset", "method"], how="left")
    imbalance, protocol = (
        table.sort_values(["dataset", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
        .reset_index(drop=True) for table in (imbalance, protocol_table(runs, options)))
    return Report(options, runs, epochs, main, imbalance, protocol, across, friedman, notes)


TEST_RESAMPLES = 2000


def resample_test_intervals(runs: pd.DataFrame, main: pd.DataFrame, options: ReportOptions,
                            notes: list[str]) -> pd.DataFrame:
    """95 % percentile intervals of Δ that vary both the seeds and the test set (`delta_low_rt`,
    `delta_high_rt`): each of `TEST_RESAMPLES` replicates draws the test clips with replacement, the
    same clips for every run of the dataset (methods stay paired on clips), and the seeds (pairs when
    the comparison is paired), then recomputes accuracy from the stored predictions. rng seed 0."""
    if options.metric != "acc" or not options.tested:
        notes.append("--resample-test needs --metric acc and a tested selection; skipped")
        return main
    selection = "final" if options.selection == "final" else "best_val"
    main = main.copy()
    main["delta_low_rt"], main["delta_high_rt"] = np.nan, np.nan
    rng = np.random.default_rng(0)
    for dataset, group in runs.groupby("dataset", sort=True):
        correct = {row.run_id: _correct(row, selection) for row in group.itertuples()}
        if any(c is None for c in correct.values()) or len({len(c) for c in correct.values()}) != 1:
            notes.append(f"{dataset}: --resample-test needs every run's prediction file on the same test clips; "
                         "skipped there")
            continue
        n_items = len(next(iter(correct.values())))
        weights = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=TEST_RESAMPLES) / n_items
        accs = {run_id: weights @ c for run_id, c in correct.items()}  # (B,) accuracy per replicate
        base = group[group["variant"] == options.baseline]
        for i in main.index[(main["dataset"] == dataset) & main["delta"].notna()]:
            cell = group[group["variant"] == main.at[i, "method"]]
            deltas = _replicate_deltas(cell, base, accs, bool(main.at[i, "n_pairs"]), rng)
            main.at[i, "delta_low_rt"], main.at[i, "delta_high_rt"] = np.percentile(deltas, [2.5, 97.5])
    notes.append(f"Δ [95 %, test resampled]: {TEST_RESAMPLES} bootstrap replicates drawing both seeds and test "
                 "clips (the same clips for every method), so it also covers the finite test set; with fewer "
                 "than about 10 seeds a percentile bootstrap over seeds is too narrow, so read it next to the "
                 "t-interval, not instead of it")
    return main


def _correct(row: Any, selection: str) -> np.ndarray | None:
    """1.0/0.0 per test clip, ordered by sample id, from a run's prediction file (None if absent)."""
    table = _predictions(row, selection, ["pred"]) if hasattr(row, "results_folder") else pd.DataFrame()
    if table.empty:
        return None
    table = table.sort_values("sample_id")
    return (table["pred"] == table["y"]).to_numpy(float)


def _predictions(row: Any, selection: str, columns: list[str]) -> pd.DataFrame:
    """One selection's rows of a run's prediction file (sample_id, y and `columns`); empty if absent."""
    path = RunPaths(Path(row.results_folder), row.dataset, row.method, row.run_id).preds
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_parquet(path, columns=["selection", "sample_id", "y", *columns])
    return table[table["selection"] == selection]


def _replicate_deltas(cell: pd.DataFrame, base: pd.DataFrame, accs: dict[str, np.ndarray], paired: bool,
                      rng: np.random.Generator) -> np.ndarray:
    """Δ per replicate: seeds (or seed pairs) resampled, each run's accuracy on that replicate's clips."""
    if paired:
        joined = cell[["pair_key", "run_id"]].merge(base[["pair_key", "run_id"]], on="pair_key",
                                                    suffixes=("", "_base"))
        diffs = np.stack([accs[a] - accs[b] for a, b in zip(joined["run_id"], joined["run_id_base"], strict=True)])
        pick = rng.integers(0, len(joined), size=(diffs.shape[1], len(joined)))
        return np.take_along_axis(diffs.T, pick, axis=1).mean(axis=1)
    own = np.stack([accs[r] for r in cell["run_id"]]).T  # (B, runs)
    ref = np.stack([accs[r] for r in base["run_id"]]).T
    pick_own = rng.integers(0, own.shape[1], size=own.shape)
    pick_ref = rng.integers(0, ref.shape[1], size=ref.shape)
    return np.take_along_axis(own, pick_own, axis=1).mean(1) - np.take_along_axis(ref, pick_ref, axis=1).mean(1)


def _fallback_notes(runs: pd.DataFrame, options: ReportOptions) -> list[str]:
    """Runs whose post-hoc calibration (dlc) was refused because it made validation worse."""
    prefix = SELECTIONS["final"] if options.selection == "final" else SELECTIONS["best-val"]
    column = f"{prefix}diag_fell_back"
    if column not in runs:
        return []
    notes = []
    for (dataset, method), cell in runs.groupby(["dataset", "variant"], sort=True):
        flags = cell[column].dropna()
        if len(flags) and flags.any():
            notes.append(f"{method} on {dataset}: the calibration fell back to the uncalibrated decision in "
                         f"{int(flags.sum())} of {len(flags)} runs (it made the validation NLL worse)")
    return notes


def _methods_in_order(runs: pd.DataFrame, baseline: str) -> list[str]:
    order = list(dict.fromkeys(runs["variant"]))
    return sorted(order, key=lambda m: (m != baseline, order.index(m)))


def main_table(runs: pd.DataFrame, options: ReportOptions, notes: list[str]) -> pd.DataFrame:
    rows = []
    for dataset, group in runs.groupby("dataset", sort=True):
        base = group[group["variant"] == options.baseline]
        if base.empty:
            notes.append(f"{dataset}: no runs of the baseline {options.baseline}; no comparisons there")
        for method in _methods_in_order(group, options.baseline):
            cell = group[group["variant"] == method]
            summary = stats.summarize(cell[options.column].to_numpy(float), bounds=(0.0, 1.0))
            row = {"dataset": dataset, "method": method, "n": summary.n, "mean": summary.mean, "sd": summary.sd,
                   "reference": method_flag(cell, "method_reference"),
                   "ci_low": summary.ci_low, "ci_high": summary.ci_high, "median": summary.median,
                   "seeds": ",".join(str(s) for s in sorted(cell["seed"])), **_training_cost(cell, base)}
            differing = _protocol_differences(cell, base) if method != options.baseline and not base.empty else ""
            if differing:  # not comparable: the difference would be the protocol's, not the method's
                row.update({"dropped": f"not compared with {options.baseline}: {differing}", "test": None})
                notes.append(f"{dataset}: {method} was not compared with {options.baseline}: they ran under "
                             f"different settings ({differing}); rerun one under the other's, or report them apart")
            elif method != options.baseline and not base.empty:
                if options.tested:
                    row.update(_comparison(cell, base, options))
                else:
                    row["delta"] = summary.mean - float(np.nanmean(base[options.column].to_numpy(float)))
            rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("delta", "p", "test"):
        if column not in table:
            table[column] = np.nan
    # The family is every comparison attempted: one whose p is undefined (identical, too few seeds)
    # counts with p = 1, so the correction does not depend on the outcomes.
    attempted = table["test"].notna()
    family = np.where(attempted & table["p"].isna(), 1.0, table["p"].to_numpy(float))
    table["p_holm"] = np.where(table["p"].notna(), stats.holm(family), np.nan)
    table["significant"] = (table["p_holm"] < options.alpha) & (not options.exploratory)
    if "equivalent" in table:  # a row is never both: a significant difference is not an equivalence
        table["equivalent"] = table["equivalent"].fillna(False).astype(bool) & ~table["significant"]
    table["mark"] = [_mark(r, options) for r in table.to_dict("records")]
    _main_notes(table, options, notes, int(attempted.sum()))
    return table


def _training_cost(cell: pd.DataFrame, base: pd.DataFrame) -> dict[str, float]:
    """Train GFLOPs per sample (mmbench/train/cost.py), with those of the runs a method requires (umt's teachers),
    and as a multiple of the baseline's; nan for results written before mmbench counted them."""
    def gflops(frame: pd.DataFrame) -> float:
        own = frame["train_gflops_per_sample"].to_numpy(float) if "train_gflops_per_sample" in frame else []
        required = (frame["required_gflops_per_sample"].fillna(0.0).to_numpy(float)
                    if "required_gflops_per_sample" in frame else np.zeros(len(own)))
        # a run without training of its own (ume) costs what the runs it stands on cost
        total = np.where(np.isfinite(own), own, np.where(required > 0, 0.0, np.nan)) + required
        return float(np.nanmean(total)) if np.isfinite(total).any() else math.nan

    own, baseline = gflops(cell), gflops(base)
    return {"gflops": own, "cost_x": own / baseline if baseline > 0 else math.nan}


def _main_notes(table: pd.DataFrame, options: ReportOptions, notes: list[str], family: int) -> None:
    if not options.tested:
        notes.append("WARNING --selection paper: the maximum of test accuracy over epochs selects the checkpoint "
                     "on the test set; it is optimistic and shown for comparison with papers only: no tests, no "
                     "intervals of differences")
        return
    if (table["n"] <= 3).any():
        notes.append("? = low power (n <= 3 seeds, or the minimum detectable effect exceeds twice the ROPE); "
                     "treat those p-values as descriptive")
    if options.exploratory:
        notes.append(f"EXPLORATORY: the primary endpoint is {options.primary}; these tests of {options.endpoint} "
                     "are shown unmarked (no † / ≈), because testing every metric and selection and keeping the "
                     "best multiplies the false-positive rate")
    else:
        notes.append(f"primary endpoint {options.primary}; Holm over {family} comparisons with {options.baseline} "
                     f"(family: every method vs the baseline on every dataset), alpha {options.alpha}")
    notes.append(f"P(Δ>{options.rope * 100:g}pp) is the posterior probability under a flat prior on Δ: a Student-t "
                 "centred on the observed Δ with the test's standard error and df (Benavoli et al. 2017); "
                 "docs/statistics.md")
    if (table["test"] == "sign-flip").any() or (table["test"] == "permutation").any():
        notes.append("sign-flip / permutation: every seed differs by the same amount, where the t-test is "
                     "undefined; the exact permutation p is used (its smallest value is 2/2^n: 0.0625 at 5 seeds)")
    if "dropped" in table and table["dropped"].fillna("").astype(bool).any():
        notes.append("n used = seeds entering the comparison (method/baseline); 'dropped' says which were left "
                     "out and why")


def _pairing(cell: pd.DataFrame, base: pd.DataFrame, column: str) -> tuple[pd.DataFrame | None, str]:
    """The seed-matched rows (value, value_base, pair_key), or None and why the comparison is unpaired.

    Pairs need both sides to say their seeds share random streams (`crn`, `pair_key`) and a
    common set of seeds that is at least half of each side (and 2 or more); otherwise the
    comparison uses every run, unpaired, rather than silently a few matched seeds."""
    def pairable(frame: pd.DataFrame) -> bool:
        return bool(frame.get("crn", pd.Series([False])).all() and frame["pair_key"].notna().all())

    if not (pairable(cell) and pairable(base)):
        return None, "seeds do not share random streams"
    joined = cell[["pair_key", "seed", column]].merge(base[["pair_key", column]], on="pair_key",
                                                        suffixes=("", "_base"))
    if len(joined) < max(2, math.ceil(len(cell) / 2), math.ceil(len(base) / 2)):
        return None, f"only {len(joined)} common seeds"
    return joined, ""


def _paired_values(cell: pd.DataFrame, base: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    joined, _ = _pairing(cell, base, column)
    if joined is None:
        return None
    keep = joined[column].notna() & joined[f"{column}_base"].notna()
    return joined.loc[keep, column].to_numpy(float), joined.loc[keep, f"{column}_base"].to_numpy(float)


def _dropped(cell: pd.DataFrame, base: pd.DataFrame, column: str, method: str, baseline: str,
             joined: pd.DataFrame | None, why_unpaired: str) -> str:
    """Which seeds did not enter the comparison, and why, in a few words."""
    parts = [f"unpaired ({why_unpaired})"] if joined is None and why_unpaired else []
    for name, frame in ((method, cell), (baseline, base)):
        nan_seeds = sorted(frame.loc[frame[column].isna(), "seed"])
        if nan_seeds:
            parts.append(f"{name} seeds {_seed_list(nan_seeds)}: {column} is NaN")
        if joined is not None:
            lonely = sorted(set(frame["pair_key"]) - set(joined["pair_key"]))  # pair_key is the seed
            if lonely:
                parts.append(f"{name} seeds {_seed_list(lonely)}: no partner seed")
    return "; ".join(parts)


def _seed_list(seeds: list) -> str:
    return ",".join(str(s) for s in seeds)


def _comparison(cell: pd.DataFrame, base: pd.DataFrame, options: ReportOptions) -> dict[str, Any]:
    """Paired by seed when both sides say their seeds share random streams and enough seeds are
    common, else Welch on every run; NaN values and unmatched seeds are listed in `dropped`."""
    joined, why = _pairing(cell, base, options.column)
    paired = joined is not None
    if paired:
        a, b = joined[options.column].to_numpy(float), joined[f"{options.column}_base"].to_numpy(float)
    else:
        a, b = cell[options.column].to_numpy(float), base[options.column].to_numpy(float)
    result = stats.compare(a, b, paired=paired, rope=options.rope)
    narrow = stats.compare(a, b, paired=paired, rope=options.rope, confidence=0.90)
    equivalent = (math.isfinite(narrow.ci_low) and -options.rope <= narrow.ci_low
                  and narrow.ci_high <= options.rope)  # TOST at 5 % == the 90 % interval inside the ROPE
    # A difference of two scores in [0, 1] lies in [-1, 1]; the t-interval is cut to it (n = 2).
    result = dataclasses.replace(result, ci_low=max(result.ci_low, -1.0), ci_high=min(result.ci_high, 1.0))
    return {"n_pairs": result.n_method if paired else 0, "n_used": f"{result.n_method}/{result.n_baseline}",
            "dropped": _dropped(cell, base, options.column, str(cell["variant"].iloc[0]), options.baseline,
                                joined, why),
            "test": result.test, "delta": result.delta,
            "delta_low": result.ci_low, "delta_high": result.ci_high, "p": result.p, "d_z": result.d_z,
            "mde": result.mde, "p_better": result.p_better, "p_rope": result.p_rope, "p_worse": result.p_worse,
            "low_power": bool(result.low_power or (math.isfinite(result.mde) and result.mde > 2 * options.rope)),
            "equivalent": bool(equivalent), "signflip_p": result.signflip_p, "correlation": result.correlation,
            "bootstrap_low": result.bootstrap_low, "bootstrap_high": result.bootstrap_high}


def _mark(row: dict[str, Any], options: ReportOptions) -> str:
    marks = ""
    p = row.get("p")
    if options.exploratory:
        return "?" if row.get("low_power") is True else ""
    if p is not None and isinstance(p, float) and p < options.alpha:
        marks += "*"
    if row.get("significant"):
        marks += "†"
    if row.get("equivalent") is True:
        marks += "≈"
    if row.get("low_power") is True:
        marks += "?"
    return marks


def imbalance_table(runs: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Per-modality accuracy from the fused model's own heads, the imbalance ratio and the
    decision-layer diagnostics, at the chosen selection (paper -> best-val heads)."""
    prefix = SELECTIONS[options.selection] if options.selection != "paper" else SELECTIONS["best-val"]
    columns = {"acc_head_a": "audio", "acc_head_v": "visual", "rho": "rho", "d3_logit_share_a": "d3_audio_logit",
               "d4_audio_decides": "d4_audio_decides", "d4_excess_audio": "d4_excess_audio",
               "shapley_a": "shapley_a", "shapley_v": "shapley_v"}
    rows = []
    for (dataset, method), cell in runs.groupby(["dataset", "variant"], sort=False):
        row: dict[str, Any] = {"dataset": dataset, "method": method, "n": len(cell)}
        if "modality_logits" in cell:  # what the per-modality columns read (mmbench.train.method.MODALITY_LOGITS)
            row["logits"] = "/".join(sorted(set(cell["modality_logits"].dropna()))) or "–"
        for column, name in columns.items():
            if f"{prefix}{column}" in cell:
                values = cell[f"{prefix}{column}"].to_numpy(float)
                if column == "rho":  # a ratio: averaged on the log scale (geometric mean), docs/statistics.md
                    values = np.log(np.where(values > 0, values, np.nan))
                bounded = column.startswith(("acc_", "d3_", "d4_audio_decides"))  # shares and accuracies
                summary = stats.summarize(values, bounds=(0.0, 1.0) if bounded else None)
                row[name], row[f"{name}_ci"] = summary.mean, (summary.ci_high - summary.ci_low) / 2
                row[f"{name}_low"], row[f"{name}_high"] = summary.ci_low, summary.ci_high
                if column == "rho":
                    row[name] = math.exp(summary.mean) if math.isfinite(summary.mean) else math.nan
                    row[f"{name}_ci"] = math.nan  # an interval on the log scale; see rho_log_ci
                    row["rho_log_ci"] = (summary.ci_high - summary.ci_low) / 2
        if {f"{prefix}shapley_a", f"{prefix}shapley_v"} <= set(cell):
            row.update(_imbalance_per_run(cell[f"{prefix}shapley_a"].to_numpy(float),
                                          cell[f"{prefix}shapley_v"].to_numpy(float)))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["dataset"], kind="stable").reset_index(drop=True)


def _imbalance_per_run(phi_a: np.ndarray, phi_v: np.ndarray) -> dict[str, float]:
    """The imbalance degree of each run, then its mean; and how often each modality dominates.
    (The degree of the mean Shapley values hides runs whose dominant modality flips: two runs at
    I = 1, one audio- and one visual-dominated, average to I = 0.)"""
    degrees = np.array([stats.imbalance_degree(a, v) for a, v in zip(phi_a, phi_v, strict=True)])
    valid = ~np.isnan(phi_a) & ~np.isnan(phi_v)
    n = max(int(valid.sum()), 1)
    return {"imbalance_degree": float(np.nanmean(degrees)) if np.isfinite(degrees).any() else math.nan,
            "audio_dominates": float((phi_a[valid] > phi_v[valid]).sum() / n),
            "visual_dominates": float((phi_v[valid] > phi_a[valid]).sum() / n)}


def capability_table(runs: pd.DataFrame, options: ReportOptions, notes: list[str]) -> pd.DataFrame:
    """D5 capability gap (docs/methods.md): per class, the accuracy of each modality's logits in the
    fused model minus that of the separately trained `unimodal` run of the same dataset and seed, on
    the same test samples; averaged over classes, then over seeds (mean and the worst class).
    Needs the runs' prediction files; NaN, with a note, where no such unimodal run exists."""
    if "results_folder" not in runs:
        return pd.DataFrame()
    selection = "final" if options.selection == "final" else "best_val"
    unimodal = runs[runs["method"] == "unimodal"]
    modality_of = unimodal["hp_modality"] if "hp_modality" in unimodal else pd.Series("", index=unimodal.index)
    rows, missing = [], set()
    for (dataset, method), cell in runs[runs["method"] != "unimodal"].groupby(["dataset", "variant"], sort=False):
        row: dict[str, Any] = {"dataset": dataset, "method": method}
        for m, modality in (("a", "audio"), ("v", "visual")):
            gaps = []
            for run in cell.itertuples():
                ref = unimodal[(unimodal["dataset"] == dataset) & (unimodal["seed"] == run.seed)
                               & (modality_of == modality)]
                gap = _class_gaps(run, ref.iloc[0], m, selection) if len(ref) else None
                if gap is None:
                    missing.add((dataset, method))
                else:
                    gaps.append(gap)
            per_class = np.nanmean(np.stack(gaps), axis=0) if gaps else np.array([math.nan])
            row[f"d5_gap_{m}"] = float(np.nanmean(per_class)) if gaps else math.nan
            row[f"d5_worst_{m}"] = float(np.nanmin(per_class)) if gaps else math.nan
        rows.append(row)
    if missing:
        notes.append("D5 capability gap needs a `unimodal` run (--set modality=audio and =visual) of the same "
                     "dataset and seed in the results; missing for " + ", ".join(f"{m} on {d}" for d, m in
                                                                              sorted(missing)) + " (shown as –).")
    return pd.DataFrame(rows)


def _class_gaps(run: Any, ref: Any, m: str, selection: str) -> np.ndarray | None:
    """Per-class D5 of one run's modality m against one unimodal run, or None when either has no
    predictions of that modality or their test samples differ."""
    own, alone = (_predictions(row, selection, ["pred", f"pred_{m}"]) for row in (run, ref))
    if own.empty or alone.empty or (own[f"pred_{m}"] < 0).any():
        return None
    joined = own.merge(alone[["sample_id", "pred"]], on="sample_id", suffixes=("", "_unimodal"))
    if len(joined) != len(own):
        return None
    num_classes = len(str(run.classes).split(","))
    return stats.capability_gap(joined[f"pred_{m}"].to_numpy(), joined["pred_unimodal"].to_numpy(),
                                  joined["y"].to_numpy(), num_classes)


def protocol_table(runs: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Test accuracy at the best-validation epoch, at the final epoch and the maximum over
    epochs (the papers' protocol, which selects on the test set): the gap is its optimism."""
    rows = []
    for (dataset, method), cell in runs.groupby(["dataset", "variant"], sort=False):
        best, final = cell.get("best_val_acc"), cell.get("final_acc")
        paper = cell.get("paper_max_acc")
        row = {"dataset": dataset, "method": method, "n": len(cell),
               "best_val": float(best.mean()) if best is not None else math.nan,
               "final": float(final.mean()) if final is not None else math.nan,
               "max_over_epochs": float(paper.mean()) if paper is not None else math.nan}
        if calibrates(cell):  # the epochs' test accuracy is of the uncalibrated decision: not comparable
            row["max_over_epochs"] = math.nan
        row["optimism"] = row["max_over_epochs"] - row["best_val"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["dataset"], kind="stable").reset_index(drop=True)


def calibrates(cell: pd.DataFrame) -> bool:
    """Whether the runs' method fits a calibration on validation after training (e.g. dlc): its best-val
    and final accuracies are of the calibrated model, its per-epoch test accuracies are not."""
    return method_flag(cell, "method_calibrates")


def method_flag(cell: pd.DataFrame, column: str) -> bool:
    """A property of the runs' method stored in the run rows; results written before it was stored ask
    the registry (which imports the methods, and torch)."""
    if column in cell and cell[column].notna().all():
        return bool(cell[column].astype(bool).any())
    from mmbench.registry import METHODS
    from mmbench.train.method import Method

    name = str(cell["method"].iloc[0])
    if name not in METHODS.names():
        return False
    method = METHODS.get(name)
    return bool(method.reference) if column == "method_reference" else method.calibrate is not Method.calibrate


def across_datasets(main: pd.DataFrame, runs: pd.DataFrame, options: ReportOptions,
                    notes: list[str]) -> tuple[pd.DataFrame | None, dict[str, Any] | None]:
    datasets = sorted(main["dataset"].unique())
    if len(datasets) < 2:
        notes.append("one dataset: no cross-dataset aggregate")
        return None, None
    scores = main.pivot_table(index="dataset", columns="method", values="mean")
    complete = scores.dropna()
    if len(complete) < len(scores):
        notes.append(f"mean ranks use the {len(complete)} of {len(scores)} datasets where every method ran")
    ranks = stats.mean_ranks(complete) if len(complete) else pd.Series(dtype=float)
    rows = []
    for method in _methods_in_order(runs, options.baseline):
        diffs = _paired_diffs(runs, method, options) if method != options.baseline else []
        n_datasets = int(scores[method].notna().sum()) if method in scores else 0
        row: dict[str, Any] = {"method": method, "mean_rank": float(ranks.get(method, math.nan)),
                               "n_datasets": n_datasets, "n_ranked": len(complete) if method in complete else 0,
                               "n_delta": len(diffs)}
        if method != options.baseline and len(diffs) < n_datasets:
            notes.append(f"Δ̄ of {method} vs {options.baseline} uses {len(diffs)} of its {n_datasets} datasets: the "
                         "others have no seed-paired runs of the baseline")
        if diffs:
            aggregate = stats.fixed_datasets_delta(diffs)
            wins, ties, losses = stats.wins_ties_losses([float(np.mean(d)) for d in diffs], options.rope)
            row.update({"delta": aggregate.delta, "delta_low": aggregate.ci_low, "delta_high": aggregate.ci_high,
                        "wins": wins, "ties": ties, "losses": losses})
        rows.append(row)
    friedman = None
    if len(complete) >= 5 and complete.shape[1] >= 3:
        result = stats.friedman_test(complete)
        friedman = {k: getattr(result, k) for k in ("n_datasets", "k", "chi2", "p_chi2", "f_stat", "p_f", "cd")}
    else:
        notes.append(f"Friedman / Iman-Davenport test and critical-difference diagram omitted: they need at "
                     f"least 5 datasets with every method (here {len(complete)}); with fewer, no pair of methods "
                     "can be told apart by ranks (Demšar 2006; docs/statistics.md §6)")
    return pd.DataFrame(rows), friedman


def _paired_diffs(runs: pd.DataFrame, method: str, options: ReportOptions) -> list[np.ndarray]:
    diffs = []
    for _dataset, group in runs.groupby("dataset"):
        cell, base = group[group["variant"] == method], group[group["variant"] == options.baseline]
        matched = _paired_values(cell, base, options.column)
        if matched is not None:
            diffs.append(matched[0] - matched[1])
    return diffs

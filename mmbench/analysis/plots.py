"""Figures for `mmbench report` (docs/statistics.md), drawn headless and written byte-stable.

Why these choices:
* The Agg backend is selected before pyplot is imported, so the report renders on CI machines
  and over ssh without a display; every figure is closed after saving, so a report over many
  datasets does not accumulate figures in pyplot's registry.
* Files carry no timestamps or version strings (PNG "Software", SVG "Date", PDF creator /
  producer / creation date) and SVG ids come from a fixed hash salt, so rendering the same
  results twice gives identical bytes: figures can be committed and diffed, and tests can
  compare them.
* With 3-5 seeds per cell, every seed is shown as a dot and summarised by a t-interval;
  box plots of 3 points would suggest quartiles that do not exist.
* A method keeps its colour in every figure (tab10 over the sorted method names of the runs),
  so figures of one report can be read side by side.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402

from mmbench.analysis.stats import imbalance_degree, summarize  # noqa: E402

DPI = 150
DEFAULT_BASELINE = "joint"
AUDIO_COLOUR, VISUAL_COLOUR = "#3b6fb6", "#e08a2c"
_RC: dict[str, Any] = {
    "text.usetex": False,  # a TeX install must not change (or break) the figures
    "svg.hashsalt": "mmbench",  # fixed SVG element ids -> byte-stable SVG
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",  # bundled with matplotlib: same glyphs everywhere
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_METADATA: dict[str, dict[str, None]] = {
    ".png": {"Software": None},
    ".svg": {"Date": None},
    ".pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}
_SELECTIONS = {"best_val_": "best-val epoch", "final_": "final epoch",
               "paper_max_": "max over test epochs, optimistic"}
_ACC_PANELS = {"test_acc": "fused", "test_acc_head_a": "audio head", "test_acc_head_v": "visual head"}


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.5, 1, 2) instead of 5e-01: ρ is read as a ratio."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


_RHO_PANELS = {"train_rho": "train ρ (audio / visual score ratio)", "test_rho": "test ρ (audio / visual score ratio)"}


# --- shared helpers ------------------------------------------------------------------------------

@contextmanager
def _figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[tuple[Figure, np.ndarray]]:
    """A constrained-layout figure under the report's rcParams, closed whatever happens;
    the rcParams stay in force until the caller has saved (SVG reads the hash salt then)."""
    with matplotlib.rc_context(_RC):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained", **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _target(path: str | Path | None) -> Path:
    if path is None:
        raise TypeError("a figure needs a path to be written to")
    target = Path(path)
    if target.suffix.lower() not in _METADATA:
        raise ValueError(f"figure {target.name}: use a .png, .svg or .pdf file name")
    return target


def _save(fig: Figure, path: Path) -> Path:
    """Write without timestamps or version strings, so the same figure gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata=_METADATA[path.suffix.lower()])
    return path


def method_colours(runs: pd.DataFrame) -> dict[str, Any]:
    """One colour per method, from the sorted names of every method in `runs` (all datasets),
    so a method has the same colour in every figure of a report."""
    methods = sorted({str(m) for m in runs["method"].dropna()}) if "method" in runs else []
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _dataset_runs(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    missing = [c for c in ("dataset", "method", "run_id") if c not in runs]
    if missing:
        raise ValueError(f"the runs table has no {', '.join(missing)} column (is the results folder empty?)")
    rows = runs[runs["dataset"] == dataset]
    if rows.empty:
        have = ", ".join(sorted(str(d) for d in runs["dataset"].dropna().unique())) or "none"
        raise ValueError(f"dataset {dataset!r} is not in the runs (datasets there: {have})")
    return rows.assign(method=rows["method"].astype(str))


def _method_order(rows: pd.DataFrame, baseline: str | None) -> list[str]:
    """Order of first appearance, the baseline first: the reader compares against it."""
    order = list(dict.fromkeys(rows["method"]))
    return sorted(order, key=lambda m: (m != baseline, order.index(m)))


def _numeric(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def t_interval(values: np.ndarray, confidence: float = 0.95, bounds: tuple[float, float] | None = None
               ) -> tuple[float, float, float]:
    """Mean and two-sided t-interval of the finite values (docs/statistics.md: t, not bootstrap, at
    n = 3-5), cut to `bounds`; the interval collapses to the mean for a single value."""
    summary = summarize(np.asarray(values, float), confidence, bounds)
    if summary.n < 2:
        return summary.mean, summary.mean, summary.mean
    return summary.mean, summary.ci_low, summary.ci_high


def _seeds_text(counts: list[int]) -> str:
    counts = [c for c in counts if c > 0]
    if not counts:
        return "n = 0 seeds"
    low, high = min(counts), max(counts)
    return f"n = {low} seed{'s' if high != 1 else ''}" if low == high else f"n = {low}–{high} seeds"


def _is_fraction(metric: str) -> bool:
    """Accuracy-like columns (acc, macro-F1, mAP) are stored as fractions, shown in pp."""
    return bool({"acc", "f1", "map"} & set(metric.split("_")))


def _describe(metric: str) -> str:
    """`best_val_acc` -> `acc at the best-val epoch`: titles say which checkpoint is shown."""
    for prefix, label in _SELECTIONS.items():
        if metric.startswith(prefix):
            return f"{metric[len(prefix):]} ({label})"
    return metric


def _tilt(ax: Axes, labels: list[str]) -> None:
    """Tilt long method names so neighbouring labels cannot overlap."""
    if len(labels) > 5 or max((len(s) for s in labels), default=0) > 9:
        for label in ax.get_xticklabels():
            label.set_rotation(25)
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


def _joined(runs: pd.DataFrame, epochs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Epoch rows of the dataset's runs with the runs' method (the caller's label) and seed."""
    rows = _dataset_runs(runs, dataset)
    if epochs.empty or "run_id" not in epochs or "epoch" not in epochs:
        return pd.DataFrame(columns=["run_id", "epoch", "method", "seed"])
    keys = rows[["run_id", "method"] + (["seed"] if "seed" in rows else [])]
    epochs = epochs.drop(columns=[c for c in ("method", "seed", "dataset") if c in epochs])
    return epochs.merge(keys, on="run_id", how="inner").sort_values(["method", "run_id", "epoch"], kind="stable")


def _legend_below(fig: Figure, handles: list[Any], ncol: int) -> None:
    """A legend under the panels, read row by row in the order given (matplotlib fills
    columns first, so the handles are permuted into its column-major order)."""
    if not handles:
        return
    ncol = math.ceil(len(handles) / math.ceil(len(handles) / max(1, ncol)))  # balanced rows
    rows, large = divmod(len(handles), ncol)
    heights = [rows + 1 if c < large else rows for c in range(ncol)]
    cells = [(r, c) for r in range(max(heights)) for c in range(ncol) if r < heights[c]]
    order = sorted(range(len(handles)), key=lambda i: (cells[i][1], cells[i][0]))
    fig.legend(handles=[handles[i] for i in order], loc="outside lower center", ncol=ncol, frameon=False)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


# --- 1. strip + CI per dataset --------------------------------------------------------------------

def strip_plot(runs: pd.DataFrame, dataset: str, metric: str = "best_val_acc", baseline: str | None = "joint",
               path: str | Path | None = None) -> Path:
    """Every seed as a dot, mean with a 95 % t-interval per method, grey lines joining runs
    that share their random streams (same pair_key) and a dashed line at the baseline mean:
    with 3-5 seeds the raw values and the pairing are the evidence, not a box plot."""
    target = _target(path)
    rows = _dataset_runs(runs, dataset)
    if metric not in rows or not np.isfinite(_numeric(rows[metric])).any():
        raise ValueError(f"metric {metric!r} has no values for dataset {dataset!r}")
    scale = 100.0 if _is_fraction(metric) else 1.0
    rows = rows.assign(_y=_numeric(rows[metric]) * scale)
    rows = rows[np.isfinite(rows["_y"])]
    # Pair by stored pair_key (null when the seeds did not share random streams), else by seed.
    if "pair_key" in rows:
        keys = rows["pair_key"].where(~rows["crn"].isin([False]), None) if "crn" in rows else rows["pair_key"]
    else:
        keys = rows["seed"] if "seed" in rows else pd.Series(np.nan, index=rows.index)
    rows = rows.assign(_key=keys)
    seeds = sorted(rows["seed"].unique()) if "seed" in rows else []
    # Jitter by seed rank: deterministic, and a seed sits at the same offset under every method.
    offsets = {s: (0.14 * i / (len(seeds) - 1) - 0.07 if len(seeds) > 1 else 0.0) for i, s in enumerate(seeds)}
    methods = _method_order(rows, baseline)
    colours = method_colours(runs)
    x_of = {m: i for i, m in enumerate(methods)}
    rows = rows.assign(_x=[x_of[m] - 0.1 + offsets.get(s, 0.0) for m, s in
                           zip(rows["method"], rows["seed"] if "seed" in rows else [None] * len(rows), strict=True)])

    with _figure(figsize=(max(4.8, 1.05 * len(methods) + 2.6), 4.3)) as (fig, axes):
        ax = axes[0, 0]
        paired = False
        for (x0, y0), (x1, y1) in pair_segments(rows, methods[0] if baseline not in methods else baseline):
            ax.plot([x0, x1], [y0, y1], color="0.7", lw=0.8, zorder=1)
            paired = True
        counts = []
        for method in methods:
            cell = rows[rows["method"] == method]
            counts.append(len(cell))
            colour = colours.get(method, "0.3")
            ax.scatter(cell["_x"], cell["_y"], s=26, color=colour, edgecolor="white", linewidth=0.6, zorder=3)
            mean, low, high = t_interval(cell["_y"].to_numpy(), bounds=(0.0, 100.0) if scale == 100 else None)
            ax.errorbar(x_of[method] + 0.2, mean, yerr=[[mean - low], [high - mean]], fmt="o", ms=6,
                        color=colour, mec="black", mew=0.7, ecolor="black", elinewidth=1.2, capsize=4, zorder=4)
        handles: list[Any] = [
            Line2D([], [], ls="none", marker="o", color="0.5", mec="white", ms=6, label="one seed"),
            Line2D([], [], ls="-", marker="o", color="black", mfc="0.5", ms=6, label="mean ± 95 % t-CI"),
        ]
        if paired:
            handles.append(Line2D([], [], color="0.7", lw=0.8, label="same seed (paired)"))
        if baseline in methods:
            base_mean = float(rows.loc[rows["method"] == baseline, "_y"].mean())
            ax.axhline(base_mean, color=colours.get(baseline, "0.3"), ls="--", lw=1.0, zorder=2)
            handles.append(Line2D([], [], color=colours.get(baseline, "0.3"), ls="--", label=f"{baseline} mean"))
        ax.set_xticks(range(len(methods)), methods)
        _tilt(ax, methods)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_ylabel(f"{_describe(metric)}{' [%]' if scale == 100 else ''}")
        ax.set_title(f"{dataset}: {_describe(metric)}, {_seeds_text(counts)}")
        ax.grid(axis="y", color="0.92", zorder=0)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return _save(fig, target)


# --- 2. forest plot of Δ vs baseline ---------------------------------------------------------------

def pair_segments(rows: pd.DataFrame, anchor: str) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Grey lines of the strip plot: each method's run to the `anchor` (baseline) run with the same
    pair key, the pair its test uses. (A chain through every method would suggest pairs between
    non-baseline methods.) `rows` has method, _key, _x and _y columns."""
    segments = []
    for _key, group in rows.dropna(subset=["_key"]).groupby("_key", sort=True):
        ref = group[group["method"] == anchor]
        if ref.empty:
            continue
        start = (float(ref["_x"].iloc[0]), float(ref["_y"].iloc[0]))
        segments += [(start, (float(x), float(y))) for x, y in
                     zip(group.loc[group["method"] != anchor, "_x"], group.loc[group["method"] != anchor, "_y"],
                         strict=True)]
    return segments


def forest_labels(deltas: pd.DataFrame) -> list[str]:
    """Row labels: `(unpaired)` where the test was Welch or a permutation test, `†` where Holm-significant."""
    tests = deltas["test"] if "test" in deltas else pd.Series([""] * len(deltas), index=deltas.index)
    return [f"{label}{' (unpaired)' if str(test) in ('welch', 'permutation') else ''}"
            f"{' †' if pd.notna(sig) and bool(sig) else ''}"
            for label, sig, test in zip(deltas["label"], deltas["significant"], tests, strict=True)]


def forest_plot(deltas: pd.DataFrame, path: str | Path, rope_pp: float = 1.0) -> Path:
    """One row per (method, dataset) and aggregate: Δ with its CI against the ROPE band, so
    'better', 'practically equivalent' and 'cannot tell' are visible at a glance."""
    target = _target(path)
    needed = ["label", "delta_pp", "ci_low_pp", "ci_high_pp", "significant", "p_better"]
    missing = [c for c in needed if c not in deltas]
    if missing:
        raise ValueError(f"forest_plot needs the columns {', '.join(missing)}")
    if deltas.empty:
        raise ValueError("forest_plot has no rows to draw")
    n = len(deltas)
    ys = np.arange(n)[::-1].astype(float)
    delta, low, high = (_numeric(deltas[c]) for c in ("delta_pp", "ci_low_pp", "ci_high_pp"))
    significant = np.array([bool(v) if pd.notna(v) else False for v in deltas["significant"]])
    p_better = _numeric(deltas["p_better"])
    labels = forest_labels(deltas)
    aggregate = np.array(["aggregate" in str(s).lower() or "all datasets" in str(s).lower()
                          for s in deltas["label"]])

    with _figure(figsize=(7.2, 0.42 * n + 1.7)) as (fig, axes):
        ax = axes[0, 0]
        ax.axvspan(-rope_pp, rope_pp, color="0.88", zorder=0)
        ax.axvline(0, color="0.35", lw=0.9, zorder=1)
        for i in range(n):
            if not np.isfinite(delta[i]):
                continue
            if np.isfinite(low[i]) and np.isfinite(high[i]):
                ax.hlines(ys[i], low[i], high[i], color="black", lw=1.4, zorder=2)
            ax.plot(delta[i], ys[i], marker="D" if aggregate[i] else "o", ms=7 if aggregate[i] else 6,
                    color="black", mfc="black" if significant[i] else "white", mew=1.2, zorder=3)
        span = np.concatenate([x[np.isfinite(x)] for x in (delta, low, high)] + [np.array([-rope_pp, rope_pp])])
        pad = 0.08 * max(float(span.max() - span.min()), 1e-9)
        ax.set_xlim(float(span.min()) - pad, float(span.max()) + pad)
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_yticks(ys, labels)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        # P(Δ > ROPE) as right-hand tick labels: constrained layout makes room for them.
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        right.set_yticks(ys, [f"P(Δ>ROPE)={p:.2f}" if np.isfinite(p) else "" for p in p_better])
        right.tick_params(axis="y", length=0)
        for side in ("right", "top", "left"):
            right.spines[side].set_visible(False)
        ax.set_xlabel("Δ vs baseline [pp]  (95 % CI)")
        ax.set_title("Difference to the baseline, per method and dataset")
        handles = [Patch(color="0.88", label=f"ROPE ±{rope_pp:g} pp"),
                   Line2D([], [], ls="none", marker="o", color="black", label="† Holm-significant"),
                   Line2D([], [], ls="none", marker="o", color="black", mfc="white", label="not significant")]
        if aggregate.any():
            handles.append(Line2D([], [], ls="none", marker="D", color="black", mfc="white", label="aggregate"))
        _legend_below(fig, handles, ncol=4)
        return _save(fig, target)


# --- 3. training curves per modality ---------------------------------------------------------------

def _band(ax: Axes, table: pd.DataFrame, column: str, colour: Any, scale: float) -> bool:
    """Mean over seeds per epoch with the min-max band; False when the method has no values."""
    values = table.assign(_v=_numeric(table[column]) * scale).dropna(subset=["_v"])
    if values.empty:
        return False
    by_epoch = values.groupby("epoch")["_v"].agg(["mean", "min", "max"])
    epochs = by_epoch.index.to_numpy(float) + 1  # epochs are counted from 1 wherever a user reads them
    ax.fill_between(epochs, by_epoch["min"], by_epoch["max"], color=colour, alpha=0.18, lw=0)
    ax.plot(epochs, by_epoch["mean"], color=colour, lw=1.6, marker="o" if len(epochs) <= 15 else None, ms=3)
    return True


def _has_values(table: pd.DataFrame, column: str) -> bool:
    return column in table and bool(np.isfinite(_numeric(table[column])).any())


def curves_plot(runs: pd.DataFrame, epochs: pd.DataFrame, dataset: str, path: str | Path) -> Path:
    """Fused and per-modality test accuracy per epoch (mean over seeds, min-max band) and, in a
    second row, the audio/visual score ratio ρ: shows whether a method lifts the weak modality
    or only the fused number, and when."""
    target = _target(path)
    table = _joined(runs, epochs, dataset)
    acc = [c for c in _ACC_PANELS if _has_values(table, c)]
    rho = [c for c in _RHO_PANELS if _has_values(table, c)]
    if not acc and not rho:
        raise ValueError(f"no per-epoch accuracy or ρ for dataset {dataset!r}")
    colours = method_colours(runs)
    methods = _method_order(table, DEFAULT_BASELINE)
    ncols = max(len(acc), len(rho), 1)
    nrows = (1 if acc else 0) + (1 if rho else 0)
    seeds = _seeds_text([table.loc[table["method"] == m, "run_id"].nunique() for m in methods])

    with _figure(nrows, ncols, figsize=(3.6 * ncols + 0.4, 3.0 * nrows + 0.9), sharex=True) as (fig, axes):
        row = 0
        if acc:
            for j, column in enumerate(acc):
                ax = axes[row, j]
                for method in methods:
                    _band(ax, table[table["method"] == method], column, colours.get(method, "0.3"), 100.0)
                ax.set_title(f"{_ACC_PANELS[column]} test acc")
                ax.set_ylabel("test accuracy [%]" if j == 0 else "")
                ax.grid(color="0.93")
            # One y range for the three panels: audio vs visual heads are read against each other.
            lows, highs = zip(*(axes[row, j].get_ylim() for j in range(len(acc))), strict=True)
            for j in range(len(acc)):
                axes[row, j].set_ylim(min(lows), max(highs))
            _hide_unused(axes[row], len(acc))
            row += 1
        if rho:
            for j, column in enumerate(rho):
                ax = axes[row, j]
                for method in methods:
                    _band(ax, table[table["method"] == method], column, colours.get(method, "0.3"), 1.0)
                ax.axhline(1.0, color="0.4", ls=":", lw=1.0)
                finite = _numeric(table[column])
                finite = finite[np.isfinite(finite)]
                if len(finite) and (finite > 0).all():
                    ax.set_yscale("log")  # ratios: 2 and 1/2 are equally far from balance
                    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
                    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
                ax.set_title(_RHO_PANELS[column])
                ax.set_ylabel("ρ (1 = balanced)" if j == 0 else "")
                ax.grid(color="0.93")
            _hide_unused(axes[row], len(rho))
        for ax in axes[-1]:
            ax.set_xlabel("epoch")
        for ax in axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelbottom=True)
        fig.suptitle(f"{dataset}: training curves, mean over seeds with min–max band, {seeds}")
        _legend_below(fig, [Line2D([], [], color=colours.get(m, "0.3"), lw=2, label=m) for m in methods],
                      ncol=6)
        return _save(fig, target)


# --- 4. method diagnostics ----------------------------------------------------------------------------

def diagnostics_plot(runs: pd.DataFrame, epochs: pd.DataFrame, dataset: str, path: str | Path) -> Path | None:
    """One panel per `diag_*` column with data (OGM-GE coefficients, AUG ratios, ARM weights,
    ...): the methods log different internals, so every column is drawn generically, for the
    methods that have it. None, and no file, when no method logged any."""
    target = _target(path)
    table = _joined(runs, epochs, dataset)
    columns = [c for c in table.columns if str(c).startswith("diag_") and _has_values(table, c)]
    if not columns:
        return None
    colours = method_colours(runs)
    methods = _method_order(table, DEFAULT_BASELINE)
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    drawn: list[str] = []
    seeds: list[int] = []

    with _figure(nrows, ncols, figsize=(3.6 * ncols + 0.4, 2.7 * nrows + 0.9)) as (fig, axes):
        for ax, column in zip(axes.flat, columns, strict=False):  # spare axes are hidden below
            logged_by = []
            for method in methods:
                cell = table[table["method"] == method]
                values = cell.assign(_v=_numeric(cell[column])).dropna(subset=["_v"])
                if values.empty:
                    continue
                logged_by.append(method)
                mean = values.groupby("epoch")["_v"].mean()
                ax.plot(mean.index.to_numpy(float) + 1, mean.to_numpy(), color=colours.get(method, "0.3"), lw=1.6,
                        marker="o" if len(mean) <= 15 else None, ms=3)
                if method not in drawn:
                    drawn.append(method)
                    seeds.append(values["run_id"].nunique())
            # the method's own name for the quantity, and who logs it (the units are the method's, see
            # `mmbench list methods`)
            ax.set_title(f"{str(column)[len('diag_'):]} ({', '.join(logged_by)})", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(color="0.93")
        _hide_unused(axes, len(columns))
        fig.suptitle(f"{dataset}: method diagnostics (diag_*), mean over seeds, {_seeds_text(seeds)}")
        _legend_below(fig, [Line2D([], [], color=colours.get(m, "0.3"), lw=2, label=m) for m in drawn], ncol=6)
        return _save(fig, target)


# --- 5. imbalance bars -----------------------------------------------------------------------------

def _bars_with_seeds(ax: Axes, x: float, values: np.ndarray, width: float, colour: Any, **bar: Any) -> float:
    mean, low, high = t_interval(values)
    if not np.isfinite(mean):
        return mean
    ax.bar(x, mean, width, color=colour, zorder=2, **bar)
    ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], fmt="none", ecolor="black", elinewidth=1.1,
                capsize=3, zorder=4)
    finite = values[np.isfinite(values)]
    ax.scatter(np.full(len(finite), x), finite, s=10, color="black", alpha=0.55, lw=0, zorder=3)
    return mean


def imbalance_plot(runs: pd.DataFrame, dataset: str, path: str | Path, selection: str = "best_val") -> Path:
    """Audio vs visual accuracy of each method's own heads (t-interval bars), next to the
    Shapley contributions (with the imbalance degree I) or, without Shapley columns, the share
    of head disagreements the fused model resolves in audio's favour: how unbalanced the
    trained model is, not only how accurate."""
    target = _target(path)
    rows = _dataset_runs(runs, dataset)
    prefix = f"{selection}_"
    head_a, head_v = f"{prefix}acc_head_a", f"{prefix}acc_head_v"
    if not (_has_values(rows, head_a) or _has_values(rows, head_v)):
        raise ValueError(f"metric {head_a} / {head_v} has no values for dataset {dataset!r}")
    methods = _method_order(rows, DEFAULT_BASELINE)
    shapley = _has_values(rows, f"{prefix}shapley_a") and _has_values(rows, f"{prefix}shapley_v")
    decides = f"{prefix}d4_audio_decides"
    second = shapley or _has_values(rows, decides)
    xs = np.arange(len(methods), dtype=float)
    width = 0.38
    seeds = _seeds_text([int((rows["method"] == m).sum()) for m in methods])

    panel_width = max(3.8, 0.95 * len(methods) + 1.6)
    stacked = second and len(methods) > 5  # many methods: panels above each other, not a 19-inch strip
    shape = (2, 1) if stacked else (1, 2 if second else 1)
    size = (panel_width + 0.3, 8.2) if stacked else (panel_width * shape[1] + 0.3, 4.2)
    with _figure(*shape, figsize=size) as (fig, grid):
        axes = grid.reshape(1, -1)
        ax = axes[0, 0]
        for x, method in zip(xs, methods, strict=True):
            cell = rows[rows["method"] == method]
            for column, dx, colour in ((head_a, -width / 2, AUDIO_COLOUR), (head_v, width / 2, VISUAL_COLOUR)):
                if column in cell:
                    _bars_with_seeds(ax, x + dx, _numeric(cell[column]) * 100, width, colour)
        ax.set_xticks(xs, methods)
        _tilt(ax, methods)
        ax.set_ylabel("unimodal head accuracy [%]")
        ax.set_title("the fused model's audio / visual heads (mean ± 95 % t-CI)")
        ax.grid(axis="y", color="0.93", zorder=0)
        handles: list[Any] = [Patch(color=AUDIO_COLOUR, label="audio"), Patch(color=VISUAL_COLOUR, label="visual")]
        if shapley:
            ax2 = axes[0, 1]
            top = 0.0
            for x, method in zip(xs, methods, strict=True):
                cell = rows[rows["method"] == method]
                phi_a = float(np.nanmean(_numeric(cell[f"{prefix}shapley_a"]))) * 100
                phi_v = float(np.nanmean(_numeric(cell[f"{prefix}shapley_v"]))) * 100
                if not (np.isfinite(phi_a) and np.isfinite(phi_v)):
                    continue
                for (bottom, phi), colour in zip(stacked_bars([phi_a, phi_v]), (AUDIO_COLOUR, VISUAL_COLOUR),
                                                 strict=True):
                    ax2.bar(x, phi, 0.6, bottom=bottom, color=colour, zorder=2)
                degree = imbalance_degree(phi_a, phi_v)
                height = max(phi_a, 0.0) + max(phi_v, 0.0)
                top = max(top, height)
                ax2.annotate(f"I = {degree:.2f}", (x, height), xytext=(0, 3), textcoords="offset points",
                             ha="center", va="bottom", fontsize=8.5)
            ax2.set_ylim(top=top * 1.12 + 1e-9 if top > 0 else None)
            ax2.axhline(0, color="0.4", lw=0.8)
            ax2.set_ylabel("Shapley contribution φ [pp]")
            ax2.set_title("φ_audio + φ_visual; I = |φa − φv| / (|φa| + |φv|)")
        elif second:
            ax2 = axes[0, 1]
            for x, method in zip(xs, methods, strict=True):
                cell = rows[rows["method"] == method]
                if decides in cell:
                    # Grey, not the method colour: blue/orange already mean audio/visual here.
                    _bars_with_seeds(ax2, x, _numeric(cell[decides]) * 100, 0.6, "0.62")
            ax2.axhline(50, color="0.3", ls="--", lw=1.0)
            ax2.set_ylim(0, 100)
            ax2.set_ylabel("fused prediction = audio head's [%]")
            ax2.set_title("when the heads disagree (50 % = neutral)")
        if second:
            ax2.set_xticks(xs, methods)
            _tilt(ax2, methods)
            ax2.grid(axis="y", color="0.93", zorder=0)
        label = _SELECTIONS.get(prefix, selection)
        fig.suptitle(f"{dataset}: modality imbalance at the {label}, {seeds}")
        _legend_below(fig, handles, ncol=2)
        return _save(fig, target)


def stacked_bars(values: list[float]) -> list[tuple[float, float]]:
    """(bottom, height) per value: positive values stack upwards from 0 and negative ones downwards, so
    that no bar is drawn over another (a negative Shapley contribution stays visible)."""
    ends = {True: 0.0, False: 0.0}
    bars = []
    for value in values:
        up = value >= 0
        bars.append((ends[up], value))
        ends[up] += value
    return bars


# --- 6. critical-difference diagram ------------------------------------------------------------------

def _cliques(ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """Maximal runs of rank-sorted methods whose spread is below the CD (not told apart)."""
    groups: list[tuple[int, int]] = []
    for i in range(len(ranks)):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    return groups


def cd_diagram(mean_ranks: pd.Series, cd: float, n_datasets: int, path: str | Path) -> Path:
    """Demšar's critical-difference diagram, drawn by hand (no scikit-posthocs dependency):
    methods at their mean rank (1 = best), thick bars over groups whose ranks differ by less
    than the Nemenyi CD, and the CD with N printed, because with few datasets nothing differs."""
    target = _target(path)
    ranks = pd.to_numeric(mean_ranks, errors="coerce").dropna().sort_values(kind="stable")
    if len(ranks) < 2:
        raise ValueError("cd_diagram needs the mean ranks of at least two methods")
    if not (math.isfinite(cd) and cd > 0):
        raise ValueError(f"cd_diagram needs a positive critical difference (got {cd})")
    k = max(len(ranks), math.ceil(float(ranks.max())))
    r = ranks.to_numpy(float)
    names = [str(m) for m in ranks.index]
    groups = _cliques(r, cd)
    left = math.ceil(len(r) / 2)
    step, first = 0.32, -0.35 - 0.14 * len(groups)
    bottom = first - step * (max(left, len(r) - left) - 1) - 0.3

    with _figure(figsize=(7.5, 0.62 * (1.35 - bottom) + 0.4)) as (fig, axes):
        ax = axes[0, 0]
        ax.set_axis_off()
        ax.hlines(0, 1, k, color="black", lw=1.2)
        for tick in range(1, k + 1):
            ax.vlines(tick, 0, 0.1, color="black", lw=1.0)
            ax.text(tick, 0.16, str(tick), ha="center", va="bottom")
        for half in np.arange(1.5, k, 1.0):
            ax.vlines(half, 0, 0.05, color="black", lw=0.8)
        ax.hlines(0.75, 1, 1 + cd, color="black", lw=1.5)
        ax.vlines([1, 1 + cd], 0.69, 0.81, color="black", lw=1.5)
        ax.text(1 + cd / 2, 0.86, f"CD = {cd:.2f} (N = {n_datasets})", ha="center", va="bottom")
        ax.text(1 - 0.2, 0.16, "mean rank (1 = best)", ha="right", va="bottom", fontsize=8.5, color="0.35")
        for i, (name, rank) in enumerate(zip(names, r, strict=True)):
            on_left = i < left
            y = first - step * (i if on_left else len(r) - 1 - i)
            end = 1 - 0.25 if on_left else k + 0.25
            ax.plot([rank, rank, end], [0, y, y], color="0.25", lw=0.9)
            label = f"{name} ({rank:.2f})" if on_left else f"({rank:.2f}) {name}"
            ax.text(end - 0.05 if on_left else end + 0.05, y, label, ha="right" if on_left else "left",
                    va="center")
        for g, (a, b) in enumerate(groups):
            y = -0.2 - 0.14 * g
            ax.hlines(y, r[a] - 0.04, r[b] + 0.04, color="black", lw=4, capstyle="round")
        ax.set_xlim(1 - 0.3, max(k, 1 + cd) + 0.3)
        ax.set_ylim(bottom, 1.25)
        return _save(fig, target)

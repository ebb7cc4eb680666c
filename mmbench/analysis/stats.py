"""Statistics over seeds and datasets (docs/statistics.md), in numpy/scipy only.

Seeds are the replicates. Seed s gives every method the same initialisation and batch order
(common random numbers), so method-vs-baseline differences are analysed paired by seed when the
run metadata says so, and with Welch's t-test otherwise (docs/statistics.md). Inputs are plain
float arrays of accuracies as fractions; converting to percentage points is the caller's job.

"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from mmbench.train.shapley import Shapley, imbalance_degree, shapley_two  # noqa: F401  (re-exported)

# Differences whose spread is below this (relative to max(1, |values|)) count as constant: paired
# differences of accuracies such as 0.71 - 0.70 and 0.72 - 0.71 differ in the last bits only.
_CONSTANT_TOL = 1e-12
_EXACT_SIGNFLIP_MAX_N = 30  # meet-in-the-middle enumeration of 2**n sign vectors up to here
_BOOTSTRAP_RESAMPLES = 9999


def _clean(values: ArrayLike) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


def _two_sided_t(confidence: float, df: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, df))


# --- one cell ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellSummary:
    """One method on one dataset over seeds."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    median: float


def summarize(values: ArrayLike, confidence: float = 0.95, bounds: tuple[float, float] | None = None
              ) -> CellSummary:
    """Mean, SD (ddof 1), median and the t-interval mean ± t_{(1+c)/2, n-1} s/√n.

    NaNs are dropped. n == 1: SD and interval are NaN; n == 0: everything NaN; zero variance:
    the interval is (mean, mean). `bounds`: the values' possible range (accuracy: 0 to 1); the
    interval is cut to it, which keeps its coverage (at n = 2 a t-interval spans -276 % to 359 %).
    """
    summary = _summarize(values, confidence)
    if bounds is None or summary.n < 2:
        return summary
    low, high = bounds
    return dataclasses.replace(summary, ci_low=min(max(summary.ci_low, low), high),
                               ci_high=max(min(summary.ci_high, high), low))


def _summarize(values: ArrayLike, confidence: float) -> CellSummary:
    x = _clean(values)
    n = len(x)
    if n == 0:
        return CellSummary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean, median = float(x.mean()), float(np.median(x))
    if n == 1:
        return CellSummary(1, mean, math.nan, math.nan, math.nan, median)
    if np.ptp(x) == 0:
        return CellSummary(n, float(x[0]), 0.0, float(x[0]), float(x[0]), median)
    sd = float(x.std(ddof=1))
    half = _two_sided_t(confidence, n - 1) * sd / math.sqrt(n)
    return CellSummary(n, mean, sd, mean - half, mean + half, median)


# --- two methods on one dataset ------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """Method vs baseline on one dataset (STATS §2.2-§2.4)."""

    n_method: int
    n_baseline: int
    paired: bool  # True = paired t on matched seeds; False = Welch
    test: str  # "paired-t", "welch", "identical", "sign-flip", "permutation" (constant) or "insufficient"
    delta: float  # mean difference method - baseline
    ci_low: float
    ci_high: float
    p: float  # two-sided; NaN for identical/insufficient; exact permutation p for constant differences
    sd_diff: float  # paired: SD of the differences; Welch: NaN
    d_z: float
    g_z: float
    mde: float  # minimum detectable effect at 80 % power, two-sided at 1 - confidence
    p_worse: float
    p_rope: float
    p_better: float
    low_power: bool  # n <= 3 (Welch: the smaller arm)
    min_attainable_p_signflip: float
    signflip_p: float
    bootstrap_low: float
    bootstrap_high: float
    correlation: float


def _small_sample_j(nu: float) -> float:
    """Hedges' correction J(ν) = 1 - 3/(4ν - 1) (STATS §2.3)."""
    return 1 - 3 / (4 * nu - 1)


def _posterior(delta: float, se: float, df: float, rope: float) -> tuple[float, float, float]:
    """P(Δ < -rope), P(|Δ| <= rope), P(Δ > rope) under Student-t(df, delta, se) (STATS §2.3).

    se == 0 is a point mass at delta."""
    if not math.isfinite(delta):
        return math.nan, math.nan, math.nan
    if se == 0:
        edge = rope + _CONSTANT_TOL  # a difference of exactly one ROPE, up to float noise, is in the ROPE
        return float(delta < -edge), float(abs(delta) <= edge), float(delta > edge)
    if not (math.isfinite(se) and math.isfinite(df)):
        return math.nan, math.nan, math.nan
    post = stats.t(df, loc=delta, scale=se)
    worse, better = float(post.cdf(-rope)), float(post.sf(rope))
    return worse, float(post.cdf(rope) - post.cdf(-rope)), better


def _signflip_sums(d: np.ndarray) -> np.ndarray:
    """Σ ±d_i over all 2**len(d) sign vectors."""
    n = len(d)
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
    return signs @ d


def signflip_pvalue(diffs: ArrayLike) -> float:
    """Exact two-sided sign-flip permutation p of the mean paired difference (STATS §2.4).

    p = #{s ∈ {±1}^n : |Σ s_i d_i| >= |Σ d_i|} / 2^n, enumerated exactly (meet in the middle) for
    n <= 30; beyond that a Monte-Carlo scipy.stats.permutation_test with 99 999 resamples, rng 0.
    """
    d = _clean(diffs)
    n = len(d)
    if n == 0:
        return math.nan
    if n > _EXACT_SIGNFLIP_MAX_N:
        result = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=99_999,
                                        vectorized=True, rng=np.random.default_rng(0))
        return float(result.pvalue)
    scale = float(np.abs(d).sum())
    threshold = abs(float(d.sum())) - _CONSTANT_TOL * max(scale, 1e-300)
    if threshold <= 0:
        return 1.0
    half = n // 2
    left = np.sort(_signflip_sums(d[:half]))
    right = _signflip_sums(d[half:])
    # |l + r| >= threshold  <=>  l >= threshold - r  or  l <= -threshold - r (disjoint, threshold > 0)
    above = len(left) - np.searchsorted(left, threshold - right, side="left")
    below = np.searchsorted(left, -threshold - right, side="right")
    return float((above.sum() + below.sum()) / 2.0**n)


def _bca_interval(d: np.ndarray, confidence: float) -> tuple[float, float]:
    """BCa bootstrap CI of the mean (scipy.stats.bootstrap, 9 999 resamples, rng seed 0; STATS §2.4)."""
    if np.ptp(d) <= _CONSTANT_TOL * max(1.0, float(np.abs(d).max())):
        return float(d.mean()), float(d.mean())
    result = stats.bootstrap((d,), np.mean, n_resamples=_BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                             method="BCa", vectorized=True, rng=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.clip(np.corrcoef(a, b)[0, 1], -1.0, 1.0))


def compare(method: ArrayLike, baseline: ArrayLike, paired: bool, rope: float = 0.01,
            confidence: float = 0.95) -> Comparison:
    """Method vs baseline on one dataset (STATS §2.2-§2.4).

    paired=True: the caller has aligned the two arrays by seed (equal lengths, else ValueError);
    pairs with a NaN on either side are dropped. Paired t-test and t-CI of the mean difference
    (scipy.stats.ttest_rel), d_z = d̄/s_d, g_z = d_z·J(n-1), MDE = (t_{(1+c)/2,n-1} + t_{.8,n-1})·s_d/√n,
    Bayesian posterior Student-t(n-1, d̄, s_d/√n), exact sign-flip p when n >= 6, BCa CI when n >= 10.
    All differences 0 -> test "identical" (p NaN, CI (0, 0)); all equal and non-zero -> "sign-flip":
    the exact sign-flip p (2/2^n: 0.0625 at n = 5), no CI, no posterior, d_z/g_z NaN.

    paired=False: Welch (scipy.stats.ttest_ind(equal_var=False)) on the non-NaN values; the MDE and
    the posterior use the Welch df and SE = √(s_a²/n_a + s_b²/n_b). d_z, g_z, sd_diff, correlation,
    sign-flip and bootstrap columns are NaN. Both arms constant -> "identical" as above, or
    "permutation": the exact two-sample permutation p, no CI.

    Fewer than 2 values (pairs, or in either Welch arm) -> "insufficient": only delta (and n) filled.
    """
    a, b = np.asarray(method, dtype=float).ravel(), np.asarray(baseline, dtype=float).ravel()
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired comparison needs equal-length arrays (got {len(a)} and {len(b)})")
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
        return _compare_paired(a, b, rope, confidence)
    return _compare_welch(a[~np.isnan(a)], b[~np.isnan(b)], rope, confidence)


def _compare_paired(a: np.ndarray, b: np.ndarray, rope: float, confidence: float) -> Comparison:
    n = len(a)
    d = a - b
    nan = math.nan
    min_p = min(1.0, 2.0 / 2.0**n) if n else nan
    if n < 2:
        delta = float(d.mean()) if n else nan
        return Comparison(n, n, True, "insufficient", delta, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                          True, min_p, nan, nan, nan, nan)
    scale = max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
    correlation = _correlation(a, b)
    signflip = signflip_pvalue(d) if n >= 6 else nan
    boot_low, boot_high = _bca_interval(d, confidence) if n >= 10 else (nan, nan)
    if np.ptp(d) <= _CONSTANT_TOL * scale:
        identical = bool(np.all(np.abs(d) <= _CONSTANT_TOL * scale))
        delta = 0.0 if identical else float(d.mean())
        worse, in_rope, better = _posterior(delta, 0.0, n - 1, rope)
        if n >= 10:
            boot_low, boot_high = delta, delta
        if identical:
            return Comparison(n, n, True, "identical", 0.0, 0.0, 0.0, nan, 0.0, nan, nan, 0.0, worse, in_rope,
                              better, n <= 3, min_p, signflip, boot_low, boot_high, correlation)
        # Every seed moved by the same amount (accuracies on a 1/n_test grid do this): the t-test's
        # p = 0 and CI [Δ, Δ] claim certainty. The exact sign-flip test is valid here; its p is
        # 2/2^n (0.0625 at n = 5) and no interval is given.
        return Comparison(n, n, True, "sign-flip", delta, nan, nan, signflip_pvalue(d), 0.0, nan, nan, nan,
                          nan, nan, nan, n <= 3, min_p, signflip_pvalue(d), nan, nan, correlation)
    result = stats.ttest_rel(a, b)
    interval = result.confidence_interval(confidence)
    delta, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    d_z = delta / sd
    mde = (_two_sided_t(confidence, n - 1) + float(stats.t.ppf(0.8, n - 1))) * se
    worse, in_rope, better = _posterior(delta, se, n - 1, rope)
    return Comparison(n, n, True, "paired-t", delta, float(interval.low), float(interval.high), float(result.pvalue),
                      sd, d_z, d_z * _small_sample_j(n - 1), mde, worse, in_rope, better, n <= 3, min_p, signflip,
                      boot_low, boot_high, correlation)


def _compare_welch(a: np.ndarray, b: np.ndarray, rope: float, confidence: float) -> Comparison:
    n_a, n_b = len(a), len(b)
    nan = math.nan
    delta = float(a.mean() - b.mean()) if n_a and n_b else nan
    low_power = min(n_a, n_b) <= 3
    if min(n_a, n_b) < 2:
        return Comparison(n_a, n_b, False, "insufficient", delta, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                          low_power, nan, nan, nan, nan, nan)
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a and flat_b:
        delta = float(a[0] - b[0])
        if delta == 0:
            worse, in_rope, better = _posterior(delta, 0.0, n_a + n_b - 2, rope)
            return Comparison(n_a, n_b, False, "identical", 0.0, 0.0, 0.0, nan, nan, nan, nan, 0.0, worse,
                              in_rope, better, low_power, nan, nan, nan, nan, nan)
        # Two constant arms: Welch is undefined; the exact two-sample permutation test is valid
        # (p = 2/C(n_a+n_b, n_a) when n_a == n_b), and no interval is given.
        low_p, high_p = _rank_sum_pvalues(a, b)
        return Comparison(n_a, n_b, False, "permutation", delta, nan, nan, min(1.0, 2 * min(low_p, high_p)), nan,
                          nan, nan, nan, nan, nan, nan, low_power, nan, nan, nan, nan, nan)
    var_a = 0.0 if flat_a else float(a.var(ddof=1)) / n_a
    var_b = 0.0 if flat_b else float(b.var(ddof=1)) / n_b
    se = math.sqrt(var_a + var_b)
    if flat_a or flat_b:
        # One constant arm: scipy's variance of it is float noise (with a cancellation warning); the
        # same Welch formulas with that variance set to 0 (df = n_other - 1).
        df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
        p = float(2 * stats.t.sf(abs(delta) / se, df))
        half = _two_sided_t(confidence, df) * se
        low, high = delta - half, delta + half
    else:
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(confidence)
        df, p, low, high = float(result.df), float(result.pvalue), float(interval.low), float(interval.high)
    mde = (_two_sided_t(confidence, df) + float(stats.t.ppf(0.8, df))) * se  # the test's own (Welch) df
    worse, in_rope, better = _posterior(delta, se, df, rope)
    return Comparison(n_a, n_b, False, "welch", delta, low, high, p, nan, nan, nan, mde, worse, in_rope, better,
                      low_power, nan, nan, nan, nan, nan)


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired t-test; NaN when every difference is exactly 0


def paired_comparison(method: ArrayLike, baseline: ArrayLike, confidence: float = 0.95) -> PairedComparison:
    """Mean of method - baseline over paired seeds, its t-interval and the paired t-test p (STATS §2.3).

    A thin view of compare(paired=True); kept for benchmarks/imbalance_effect.py."""
    a, b = np.asarray(method, float), np.asarray(baseline, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("paired_comparison needs two equal-length 1-D arrays of at least 2 seeds")
    c = compare(a, b, paired=True, confidence=confidence)
    return PairedComparison(c.n_method, c.delta, c.sd_diff, c.ci_low, c.ci_high, c.p)


# --- multiplicity --------------------------------------------------------------------------------

def _pvalue_array(pvalues: ArrayLike) -> np.ndarray:
    p = np.array(pvalues, dtype=float)
    valid = p[~np.isnan(p)]
    if np.any((valid < 0) | (valid > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return p


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm step-down adjusted p (STATS §2.5): p̃_(i) = max_{j<=i} min(1, (m-j+1) p_(j)).

    NaN entries stay NaN and do not count in m; the output has the input's shape."""
    p = _pvalue_array(pvalues)
    out = np.full(p.shape, np.nan)
    flat, valid = p.ravel(), ~np.isnan(p.ravel())
    values = flat[valid]
    m = len(values)
    if m:
        order = np.argsort(values, kind="stable")
        adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * values[order]))
        result = np.empty(m)
        result[order] = adjusted
        out_flat = out.ravel()
        out_flat[valid] = result
        out = out_flat.reshape(p.shape)
    return out


def benjamini_hochberg(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p, p̃_(i) = min_{j>=i} min(1, m p_(j)/j) (STATS §2.5), via
    scipy.stats.false_discovery_control(method="bh") on the non-NaN entries; NaN stays NaN."""
    p = _pvalue_array(pvalues)
    out = np.full(p.shape, np.nan).ravel()
    flat = p.ravel()
    valid = ~np.isnan(flat)
    if valid.any():
        out[valid] = stats.false_discovery_control(flat[valid], method="bh")
    return out.reshape(p.shape)


# --- many datasets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Aggregate:
    n_datasets: int
    delta: float
    ci_low: float
    ci_high: float
    df: float
    se: float


def fixed_datasets_delta(per_dataset_diffs: Sequence[ArrayLike], confidence: float = 0.95) -> Aggregate:
    """Fixed-datasets mean paired difference (STATS §3.3).

    Δ̄ = (1/D) Σ_D d̄_D, SE² = (1/D²) Σ_D s²_D/n_D, df = (Σ s²_D/n_D)² / Σ (s²_D/n_D)²/(n_D-1) (Welch-
    Satterthwaite), CI = Δ̄ ± t_{(1+c)/2, df} SE. NaNs inside a dataset are dropped; datasets with no
    values left are skipped (n_datasets counts the ones used; ValueError if none). Zero-variance
    datasets add nothing to SE or df; if all have zero variance, CI = (Δ̄, Δ̄) and df is NaN. A dataset
    with a single difference has no variance estimate: SE, df and CI are NaN.
    """
    cells = [x for x in (_clean(d) for d in per_dataset_diffs) if len(x)]
    if not cells:
        raise ValueError("fixed_datasets_delta needs at least one dataset with differences")
    big_d = len(cells)
    delta = float(np.mean([x.mean() for x in cells]))
    if any(len(x) < 2 for x in cells):
        return Aggregate(big_d, delta, math.nan, math.nan, math.nan, math.nan)
    terms = np.array([0.0 if np.ptp(x) == 0 else x.var(ddof=1) / len(x) for x in cells])
    dfs = np.array([len(x) - 1 for x in cells], dtype=float)
    total = float(terms.sum())
    se = math.sqrt(total) / big_d
    if total == 0:
        return Aggregate(big_d, delta, delta, delta, math.nan, 0.0)
    df = total**2 / float(np.sum(terms**2 / dfs))
    half = _two_sided_t(confidence, df) * se
    return Aggregate(big_d, delta, delta - half, delta + half, df, se)


def mean_ranks(scores: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Mean rank per method (STATS §3.1): rows = datasets, columns = methods (seed-averaged scores).

    Rank 1 = best within each dataset, ties get average ranks (scipy.stats.rankdata). Rows with any
    missing method are dropped, so every method is ranked over the same datasets; ValueError if none
    is left."""
    complete = scores.dropna(axis=0, how="any")
    if complete.empty:
        raise ValueError("mean_ranks needs at least one dataset where every method has a score")
    values = complete.to_numpy(dtype=float)
    ranks = stats.rankdata(-values if higher_is_better else values, axis=1, method="average")
    return pd.Series(ranks.mean(axis=0), index=complete.columns, name="mean_rank")


@dataclass(frozen=True)
class Friedman:
    n_datasets: int
    k: int
    chi2: float
    p_chi2: float
    f_stat: float
    p_f: float
    cd: float


def nemenyi_cd(k: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference CD = q_α √(k(k+1)/(6N)), q_α = studentized_range.ppf(1-α, k, ∞)/√2
    (STATS §3.1)."""
    if k < 2 or n_datasets < 1:
        raise ValueError("nemenyi_cd needs k >= 2 methods and at least one dataset")
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6 * n_datasets))


def friedman_test(scores: pd.DataFrame, alpha: float = 0.05, higher_is_better: bool = True) -> Friedman:
    """Friedman χ²_F, Iman-Davenport F_F and the Nemenyi CD over complete rows (STATS §3.1).

    χ²_F = 12N/(k(k+1)) [Σ R_j² - k(k+1)²/4] (Demšar's form, no tie correction, so it differs from
    scipy.stats.friedmanchisquare when a dataset has ties), df k-1;
    F_F = (N-1)χ²_F / (N(k-1) - χ²_F) ~ F(k-1, (k-1)(N-1)); perfect agreement gives F = inf, p_f = 0.
    """
    ranks = mean_ranks(scores, higher_is_better)
    n = int(len(scores.dropna(axis=0, how="any")))
    k = len(ranks)
    if k < 2 or n < 2:
        raise ValueError("friedman_test needs at least 2 methods and 2 complete datasets")
    r = ranks.to_numpy(float)
    chi2 = 12 * n / (k * (k + 1)) * (float(np.sum(r**2)) - k * (k + 1) ** 2 / 4)
    chi2 = max(chi2, 0.0)
    p_chi2 = float(stats.chi2.sf(chi2, k - 1))
    denominator = n * (k - 1) - chi2
    if denominator <= _CONSTANT_TOL * n * (k - 1):
        f_stat, p_f = math.inf, 0.0
    else:
        f_stat = (n - 1) * chi2 / denominator
        p_f = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    return Friedman(n, k, chi2, p_chi2, f_stat, p_f, nemenyi_cd(k, n, alpha))


def wins_ties_losses(deltas: ArrayLike, rope: float = 0.01) -> tuple[int, int, int]:
    """Counts of Δ > rope, |Δ| <= rope, Δ < -rope over datasets (STATS §3.3); NaNs are ignored.

    |Δ| within 1e-12 of the ROPE counts as a tie (0.72 - 0.71 is not exactly 0.01 in floating point)."""
    d = _clean(deltas)
    edge = rope + _CONSTANT_TOL
    return int(np.sum(d > edge)), int(np.sum(np.abs(d) <= edge)), int(np.sum(d < -edge))


# --- imbalance -----------------------------------------------------------------------------------

# Shapley, shapley_two and imbalance_degree live in mmbench/train/shapley.py (the engine needs them without scipy).


# --- per-sample, one checkpoint each --------------------------------------------------------------

def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a single accuracy k/n (STATS §2.3, §4); (NaN, NaN) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    interval = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar p = binomtest(min(b, c), b + c, ½).pvalue (STATS §4); 1.0 when b + c == 0.

    b = #(A right, B wrong), c = #(A wrong, B right)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(min(b, c)), int(b + c), 0.5).pvalue)


# --- CI gate ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShiftTest:
    n: int
    n_ref: int
    shift: float  # Hodges-Lehmann: median of all differences current_i - reference_j
    margin: float  # drops up to this size are tolerated
    p: float  # one-sided, H1: current is lower than reference by more than `margin`
    p_gain: float  # one-sided, H1: current is higher by more than `margin`


def _rank_sum_pvalues(current: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(P(R <= r), P(R >= r)) of the current group's mid-rank sum R over every split of the pooled
    values into groups of the same sizes. Exact, ties included (conditional on the mid-ranks): the
    permutation distribution is counted by dynamic programming over doubled (integer) mid-ranks."""
    # Rounded so that 0.71 + 0.005 ties with 0.715 (accuracies live on a 1/n_test grid).
    n, pooled = len(current), np.round(np.concatenate([current, reference]), 9)
    doubled = np.rint(2 * stats.rankdata(pooled)).astype(int)
    total = int(doubled.sum())
    counts = np.zeros((n + 1, total + 1))  # counts[k, s]: subsets of k values whose doubled ranks sum to s
    counts[0, 0] = 1.0
    for weight in doubled:
        counts[1:, weight:] += counts[:-1, :total + 1 - weight].copy()
    observed = int(doubled[:n].sum())
    null = counts[n] / counts[n].sum()
    return float(null[:observed + 1].sum()), float(null[observed:].sum())


def shift_test(current: ArrayLike, reference: ArrayLike, margin: float) -> ShiftTest:
    """Rank-sum permutation test of a drop larger than `margin` (the gate's test, docs/statistics.md).

    H0: the current values are draws from the reference distribution shifted down by at most
    `margin`. The current values are raised by `margin` and the Wilcoxon-Mann-Whitney rank sum of
    the current group is referred to its permutation distribution: with fresh seeds (exchangeable
    with the reference seeds) the level is exact whatever the shape of the distribution, so one
    collapsed seed cannot make a false alarm by itself. NaNs are dropped; ValueError if either
    side is empty.
    """
    x, ref = _clean(current), _clean(reference)
    if len(x) < 1 or len(ref) < 1:
        raise ValueError(f"shift_test needs current and reference values (got {len(x)}, {len(ref)})")
    p_drop, _ = _rank_sum_pvalues(x + margin, ref)
    _, p_gain = _rank_sum_pvalues(x - margin, ref)
    shift = float(np.median(x[:, None] - ref[None, :]))
    return ShiftTest(len(x), len(ref), shift, margin, min(p_drop, 1.0), min(p_gain, 1.0))


@dataclass(frozen=True)
class PairedShiftTest:
    n: int
    mean_diff: float  # mean of current_i - reference_i over the seeds both have
    sd_diff: float
    margin: float
    p: float  # one-sided, H1: the mean difference is below -margin
    p_gain: float  # one-sided, H1: above +margin


def paired_shift_test(current: ArrayLike, reference: ArrayLike, margin: float) -> PairedShiftTest | None:
    """One-sided paired t-tests of a per-seed drop (or gain) larger than `margin` (the gate's CRN test).

    d_i = current_i - reference_i over seeds run in both; t = (d̄ ± margin)/(s_d/√n), df = n - 1.
    The t-test uses the spread of the differences themselves, so it holds whatever the correlation
    of a rerun with its twin: a numerics change that barely moves the seeds gives small s_d and
    power, a change that decorrelates them gives s_d ≈ √2·SD and a conservative test. s_d = 0 (every
    seed moved by the same amount): p is 0 or 1 by whether d̄ is past the margin. None when fewer
    than 2 seeds pair up."""
    a, b = np.asarray(current, float).ravel(), np.asarray(reference, float).ravel()
    keep = ~(np.isnan(a) | np.isnan(b))
    d = np.round(a[keep] - b[keep], 9)
    n = len(d)
    if n < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return PairedShiftTest(n, mean, 0.0, margin, 0.0 if mean < -margin else 1.0, 0.0 if mean > margin else 1.0)
    se = sd / math.sqrt(n)
    p_drop = float(stats.t.cdf((mean + margin) / se, n - 1))
    p_gain = float(stats.t.sf((mean - margin) / se, n - 1))
    return PairedShiftTest(n, mean, sd, margin, p_drop, p_gain)


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy on the samples of each class (NaN for a class without samples)."""
    correct = np.bincount(y, weights=(pred == y).astype(float), minlength=num_classes)
    total = np.bincount(y, minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def capability_gap(pred_head: np.ndarray, pred_unimodal: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """D5 (docs/methods.md) per class: accuracy of one modality's logits inside the fused model minus
    the accuracy of a separately trained unimodal model of that modality, on the same test samples.
    Negative: the fused model uses less of the modality than the modality alone can give."""
    return per_class_accuracy(pred_head, y, num_classes) - per_class_accuracy(pred_unimodal, y, num_classes)

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mmbench.analysis.stats import paired_comparison


def test_paired_comparison_matches_the_formulas():
    method = np.array([71.0, 73.5, 70.0, 74.0, 72.5])
    baseline = np.array([70.0, 72.0, 70.5, 71.0, 71.5])
    d = method - baseline
    n, mean, sd = len(d), d.mean(), d.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    c = paired_comparison(method, baseline)
    assert (c.n, c.mean_diff, c.sd_diff) == (5, pytest.approx(mean), pytest.approx(sd))
    assert (c.ci_low, c.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    t = mean / (sd / math.sqrt(n))
    assert c.p_value == pytest.approx(2 * stats.t.sf(abs(t), n - 1))


def test_identical_results_give_no_p_value_and_a_zero_interval():
    c = paired_comparison([70.0, 71.0, 72.0], [70.0, 71.0, 72.0])
    assert c.mean_diff == 0 and (c.ci_low, c.ci_high) == (0, 0) and math.isnan(c.p_value)


def test_a_constant_nonzero_difference_gets_the_exact_sign_flip_p_and_no_interval():
    c = paired_comparison([71.0, 72.0, 73.0], [70.0, 71.0, 72.0])
    assert c.mean_diff == 1.0 and c.p_value == pytest.approx(2 / 2**3)  # was p = 0, CI [1, 1]
    assert math.isnan(c.ci_low) and math.isnan(c.ci_high)


def test_needs_pairs():
    with pytest.raises(ValueError, match="equal-length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([1.0], [1.0])


# --- the extended module (STATS.md) -----------------------------------------------------------

import warnings  # noqa: E402

import pandas as pd  # noqa: E402
from statsmodels.stats import weightstats  # noqa: E402
from statsmodels.stats.contingency_tables import mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

from mmbench.analysis.stats import (  # noqa: E402
    benjamini_hochberg,
    compare,
    fixed_datasets_delta,
    friedman_test,
    holm,
    mcnemar_exact,
    mean_ranks,
    nemenyi_cd,
    paired_shift_test,
    shapley_two,
    shift_test,
    signflip_pvalue,
    summarize,
    wilson_interval,
    wins_ties_losses,
)

METHOD = np.array([0.712, 0.735, 0.701, 0.741, 0.726, 0.719])
BASE = np.array([0.700, 0.721, 0.704, 0.712, 0.714, 0.709])


def _with_sd(n: int, sd: float, mean: float = 0.0) -> np.ndarray:
    """n values with exactly this mean and sample SD."""
    z = np.linspace(-1.0, 1.0, n) ** 3 + np.arange(n) * 0.1
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + sd * z


# summarize


def test_summarize_matches_scipy_and_statsmodels():
    x = np.array([0.70, 0.72, 0.69, 0.74, 0.71])
    s = summarize(x)
    described = weightstats.DescrStatsW(x)
    assert (s.n, s.mean, s.sd, s.median) == (5, pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)), 0.71)
    assert (s.ci_low, s.ci_high) == pytest.approx(described.tconfint_mean(0.05))
    low, high = stats.t.interval(0.9, 4, loc=x.mean(), scale=stats.sem(x))
    assert (summarize(x, 0.9).ci_low, summarize(x, 0.9).ci_high) == pytest.approx((low, high))


@pytest.mark.parametrize(("n", "factor"), [(3, 2.48), (5, 1.24), (10, 0.72)])
def test_summarize_half_width_factors(n, factor):
    s = summarize(_with_sd(n, 1.0, 0.7))
    assert (s.ci_high - s.ci_low) / 2 == pytest.approx(factor, abs=0.005)


def test_summarize_edge_cases():
    nan_dropped = summarize([0.7, np.nan, 0.8])
    assert nan_dropped.n == 2 and nan_dropped.mean == pytest.approx(0.75)
    one = summarize([0.7])
    assert (one.n, one.mean, one.median) == (1, 0.7, 0.7)
    assert all(math.isnan(v) for v in (one.sd, one.ci_low, one.ci_high))
    flat = summarize([0.1, 0.1, 0.1])
    assert (flat.sd, flat.ci_low, flat.ci_high, flat.mean) == (0.0, 0.1, 0.1, 0.1)
    empty = summarize([np.nan])
    assert empty.n == 0 and math.isnan(empty.mean)


# compare, paired


def test_paired_comparison_matches_scipy_and_statsmodels():
    c = compare(METHOD, BASE, paired=True)
    d = METHOD - BASE
    ref = stats.ttest_rel(METHOD, BASE)
    assert (c.test, c.paired, c.n_method, c.n_baseline) == ("paired-t", True, 6, 6)
    assert c.delta == pytest.approx(d.mean())
    assert c.p == pytest.approx(ref.pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    described = weightstats.DescrStatsW(d)
    assert c.p == pytest.approx(described.ttest_mean(0)[1])
    assert (c.ci_low, c.ci_high) == pytest.approx(described.tconfint_mean(0.05))
    sd = d.std(ddof=1)
    assert c.sd_diff == pytest.approx(sd)
    assert c.d_z == pytest.approx(d.mean() / sd)
    assert c.g_z == pytest.approx(d.mean() / sd * (1 - 3 / (4 * 5 - 1)))
    assert c.correlation == pytest.approx(stats.pearsonr(METHOD, BASE).statistic)
    assert not c.low_power
    assert c.min_attainable_p_signflip == pytest.approx(2 / 64)
    exact = stats.permutation_test((METHOD, BASE), lambda x, y, axis: np.mean(x - y, axis=axis),
                                   permutation_type="samples", n_resamples=np.inf, vectorized=True)
    assert c.signflip_p == pytest.approx(exact.pvalue)
    assert math.isnan(c.bootstrap_low) and math.isnan(c.bootstrap_high)  # n < 10


def test_paired_bayesian_probabilities():
    c = compare(METHOD, BASE, paired=True, rope=0.005)
    d = METHOD - BASE
    posterior = stats.t(5, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(6))
    assert c.p_worse == pytest.approx(posterior.cdf(-0.005))
    assert c.p_better == pytest.approx(posterior.sf(0.005))
    assert c.p_worse + c.p_rope + c.p_better == pytest.approx(1.0)


@pytest.mark.parametrize(("n", "factor"), [(3, 3.10), (5, 1.66), (10, 0.99)])
def test_paired_mde_factors(n, factor):
    d = _with_sd(n, 0.02, 0.005)
    c = compare(0.7 + d, np.full(n, 0.7), paired=True)
    assert c.sd_diff == pytest.approx(0.02)
    assert c.mde / c.sd_diff == pytest.approx(factor, abs=0.005)
    assert c.mde == pytest.approx((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * 0.02 / math.sqrt(n))


@pytest.mark.parametrize(("n", "low_power", "min_p"), [(2, True, 0.5), (3, True, 0.25), (4, False, 0.125),
                                                      (5, False, 0.0625)])
def test_low_power_flag_and_minimum_attainable_p(n, low_power, min_p):
    c = compare(_with_sd(n, 0.01, 0.7), _with_sd(n, 0.01, 0.69)[::-1], paired=True)
    assert c.low_power is low_power
    assert c.min_attainable_p_signflip == pytest.approx(min_p)
    assert math.isnan(c.signflip_p)  # only from n = 6


def test_minimum_attainable_p_agrees_with_the_exact_tests():
    for n, quoted in [(3, 0.25), (5, 0.0625), (6, 0.031), (8, 0.0078), (10, 0.0020)]:
        d = np.arange(1, n + 1) / 100
        assert signflip_pvalue(d) == pytest.approx(2 / 2**n)
        assert stats.wilcoxon(d).pvalue == pytest.approx(2 / 2**n)
        assert 2 / 2**n == pytest.approx(quoted, abs=0.0005)


def test_signflip_p_matches_scipy_permutation_test():
    rng = np.random.default_rng(3)
    for n in (6, 7, 11):
        d = rng.normal(0.004, 0.01, n)
        exact = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                       vectorized=True)
        assert signflip_pvalue(d) == pytest.approx(exact.pvalue)
    assert signflip_pvalue(np.zeros(7)) == 1.0


def test_bootstrap_only_from_ten_seeds_and_reproducible():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.72, 0.02, 10), rng.normal(0.70, 0.02, 10)
    c = compare(a, b, paired=True)
    ref = stats.bootstrap((a - b,), np.mean, method="BCa", n_resamples=9999, rng=np.random.default_rng(0))
    assert (c.bootstrap_low, c.bootstrap_high) == pytest.approx(tuple(ref.confidence_interval))
    assert compare(a, b, paired=True) == c
    short = compare(a[:9], b[:9], paired=True)
    assert math.isnan(short.bootstrap_low) and math.isnan(short.bootstrap_high)


def test_identical_results():
    x = np.array([0.70, 0.71, 0.72, 0.69, 0.73, 0.70, 0.71, 0.74, 0.72, 0.68])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare(x, x.copy(), paired=True)
    assert (c.test, c.delta, c.ci_low, c.ci_high, c.sd_diff, c.mde) == ("identical", 0.0, 0.0, 0.0, 0.0, 0.0)
    assert math.isnan(c.p) and math.isnan(c.d_z) and math.isnan(c.g_z)
    assert (c.p_worse, c.p_rope, c.p_better) == (0.0, 1.0, 0.0)
    assert c.signflip_p == 1.0 and (c.bootstrap_low, c.bootstrap_high) == (0.0, 0.0)
    assert c.correlation == pytest.approx(1.0)


def test_constant_nonzero_difference_without_warnings():
    # 0.71 - 0.70 and 0.72 - 0.71 differ in the last bits: still constant. The t-test would give
    # p = 0 and CI [Δ, Δ]; the exact sign-flip test gives its smallest p, 2/2^n.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare([0.71, 0.72, 0.73, 0.75, 0.74, 0.76], [0.69, 0.70, 0.71, 0.73, 0.72, 0.74], paired=True)
    assert (c.test, c.sd_diff) == ("sign-flip", 0.0)
    assert c.p == pytest.approx(2 / 64) == c.signflip_p
    assert c.delta == pytest.approx(0.02) and math.isnan(c.ci_low) and math.isnan(c.ci_high)
    assert math.isnan(c.d_z) and math.isnan(c.mde) and math.isnan(c.p_rope)
    five = compare([0.72] * 5, [0.715] * 5, paired=True)
    assert five.test == "sign-flip" and five.p == pytest.approx(0.0625)  # never below 0.0625 at n = 5


def test_two_seeds():
    c = compare([0.72, 0.75], [0.70, 0.71], paired=True)
    ref = stats.ttest_rel([0.72, 0.75], [0.70, 0.71])
    assert c.test == "paired-t" and c.p == pytest.approx(ref.pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval()))
    assert c.g_z == 0.0  # J(1) = 1 - 3/3
    assert c.low_power and c.correlation == pytest.approx(1.0)


def test_insufficient_and_nan_pairs():
    one = compare([0.72], [0.70], paired=True)
    assert one.test == "insufficient" and one.delta == pytest.approx(0.02) and math.isnan(one.p)
    dropped = compare([0.72, np.nan, 0.75, 0.74], [0.70, 0.71, np.nan, 0.71], paired=True)
    assert dropped.n_method == dropped.n_baseline == 2
    assert dropped.delta == pytest.approx(compare([0.72, 0.74], [0.70, 0.71], paired=True).delta)
    with pytest.raises(ValueError, match="equal-length"):
        compare([0.7, 0.8, 0.9], [0.7, 0.8], paired=True)
    welch = compare([0.72], [0.70, 0.71, 0.69], paired=False)
    assert (welch.test, welch.n_method, welch.n_baseline) == ("insufficient", 1, 3)
    assert welch.delta == pytest.approx(0.02) and math.isnan(welch.ci_low)


# compare, Welch (unpaired seeds)


def test_welch_matches_scipy_and_statsmodels():
    a = np.array([0.712, 0.735, 0.701, 0.741, 0.726])
    b = np.array([0.700, 0.721, 0.704, 0.712, 0.714, 0.709, 0.69])
    c = compare(a, b, paired=False, rope=0.005)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert (c.test, c.paired, c.n_method, c.n_baseline) == ("welch", False, 5, 7)
    assert c.p == pytest.approx(ref.pvalue)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(ref.confidence_interval()))
    means = weightstats.CompareMeans(weightstats.DescrStatsW(a), weightstats.DescrStatsW(b))
    assert c.p == pytest.approx(means.ttest_ind(usevar="unequal")[1])
    assert (c.ci_low, c.ci_high) == pytest.approx(means.tconfint_diff(usevar="unequal"))
    se = math.sqrt(a.var(ddof=1) / 5 + b.var(ddof=1) / 7)
    # the MDE uses the test's own Welch df (it used n_a + n_b - 2 = 10)
    assert ref.df != 10
    assert c.mde == pytest.approx((stats.t.ppf(0.975, ref.df) + stats.t.ppf(0.8, ref.df)) * se)
    posterior = stats.t(ref.df, loc=a.mean() - b.mean(), scale=se)
    assert c.p_better == pytest.approx(posterior.sf(0.005))
    assert all(math.isnan(v) for v in (c.sd_diff, c.d_z, c.g_z, c.correlation, c.signflip_p,
                                       c.min_attainable_p_signflip, c.bootstrap_low))
    assert not c.low_power and compare(a[:3], b, paired=False).low_power


@pytest.mark.parametrize(("n", "factor"), [(3, 3.04), (5, 2.02), (10, 1.33)])
def test_welch_mde_factors(n, factor):
    c = compare(_with_sd(n, 1.0, 5.0), _with_sd(n, 1.0)[::-1], paired=False)
    assert c.mde == pytest.approx(factor, abs=0.005)


def test_welch_drops_nans_and_handles_constant_arms():
    a, b = np.array([0.71, np.nan, 0.73, 0.74]), np.array([0.70, 0.69, 0.72])
    c = compare(a, b, paired=False)
    assert (c.n_method, c.n_baseline) == (3, 3)
    assert c.p == pytest.approx(stats.ttest_ind(a[~np.isnan(a)], b, equal_var=False).pvalue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy: catastrophic cancellation in the constant arm
        ref = stats.ttest_ind([0.7, 0.7, 0.7], [0.68, 0.69, 0.70], equal_var=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_flat = compare([0.7, 0.7, 0.7], [0.68, 0.69, 0.70], paired=False)
    assert one_flat.test == "welch" and one_flat.p == pytest.approx(ref.pvalue)
    assert (one_flat.ci_low, one_flat.ci_high) == pytest.approx(tuple(ref.confidence_interval()))
    assert one_flat.p == pytest.approx(stats.ttest_1samp([0.68, 0.69, 0.70], 0.7).pvalue)  # df = n_other - 1
    same = compare([0.7, 0.7], [0.7, 0.7, 0.7], paired=False)
    assert same.test == "identical" and same.delta == 0 and math.isnan(same.p)
    shifted = compare([0.72, 0.72], [0.7, 0.7, 0.7], paired=False)
    # exact permutation: 1 of C(5, 2) = 10 splits puts both 0.72s in the first arm; two-sided 0.2
    assert shifted.test == "permutation" and shifted.p == pytest.approx(0.2)
    assert shifted.delta == pytest.approx(0.02) and math.isnan(shifted.ci_low)


def test_paired_comparison_is_a_view_of_compare():
    c, p = compare(METHOD, BASE, paired=True), paired_comparison(METHOD, BASE)
    assert (p.n, p.mean_diff, p.sd_diff, p.ci_low, p.ci_high, p.p_value) == (
        c.n_method, c.delta, c.sd_diff, c.ci_low, c.ci_high, c.p)


# multiplicity


def test_holm_matches_statsmodels_and_ignores_nans():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, 0.04])
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = np.array([0.01, np.nan, 0.04, 0.03, np.nan, 0.005])
    adjusted = holm(with_nan)
    assert np.isnan(adjusted[[1, 4]]).all()
    assert adjusted[~np.isnan(with_nan)] == pytest.approx(multipletests(with_nan[~np.isnan(with_nan)],
                                                                        method="holm")[1])
    # hand: m = 4, sorted 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.03, 0.06, 0.06
    assert adjusted[[5, 0, 3, 2]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert holm(p.reshape(2, 3)).shape == (2, 3)
    assert np.isnan(holm([np.nan, np.nan])).all() and holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.2, 1.5])


def test_benjamini_hochberg_matches_statsmodels_and_ignores_nans():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5, 0.04, 0.2])
    assert benjamini_hochberg(p) == pytest.approx(multipletests(p, method="fdr_bh")[1])
    with_nan = np.r_[p, np.nan]
    adjusted = benjamini_hochberg(with_nan)
    assert math.isnan(adjusted[-1]) and adjusted[:-1] == pytest.approx(multipletests(p, method="fdr_bh")[1])
    assert np.isnan(benjamini_hochberg([np.nan])).all()


# many datasets


def test_fixed_datasets_delta_by_hand():
    diffs = [np.array([0.01, 0.02, 0.03]), np.array([0.00, 0.01, -0.01, 0.02, 0.005]), np.array([0.03, 0.01])]
    agg = fixed_datasets_delta(diffs)
    terms = np.array([d.var(ddof=1) / len(d) for d in diffs])
    df = terms.sum() ** 2 / np.sum(terms**2 / np.array([2, 4, 1]))
    se = math.sqrt(terms.sum()) / 3
    delta = np.mean([d.mean() for d in diffs])
    assert (agg.n_datasets, agg.delta, agg.se, agg.df) == (3, pytest.approx(delta), pytest.approx(se),
                                                           pytest.approx(df))
    half = stats.t.ppf(0.975, df) * se
    assert (agg.ci_low, agg.ci_high) == pytest.approx((delta - half, delta + half))


def test_fixed_datasets_delta_of_one_dataset_is_the_paired_interval():
    d = METHOD - BASE
    agg, c = fixed_datasets_delta([d]), compare(METHOD, BASE, paired=True)
    assert agg.df == pytest.approx(5) and (agg.ci_low, agg.ci_high) == pytest.approx((c.ci_low, c.ci_high))


def test_fixed_datasets_delta_zero_variance_unequal_and_missing():
    varying = np.array([0.01, 0.03, 0.02, 0.04])
    agg = fixed_datasets_delta([np.full(3, 0.02), varying])
    assert agg.df == pytest.approx(3)  # only the varying dataset has variance
    assert agg.se == pytest.approx(math.sqrt(varying.var(ddof=1) / 4) / 2)
    assert agg.delta == pytest.approx((0.02 + varying.mean()) / 2)
    flat = fixed_datasets_delta([np.full(3, 0.02), np.full(5, -0.01)])
    assert (flat.se, flat.ci_low, flat.ci_high) == (0.0, flat.delta, flat.delta) and math.isnan(flat.df)
    skipped = fixed_datasets_delta([varying, np.array([]), np.array([np.nan])])
    assert skipped.n_datasets == 1 and skipped.df == pytest.approx(3)
    single = fixed_datasets_delta([varying, np.array([0.05])])
    assert single.delta == pytest.approx((varying.mean() + 0.05) / 2) and math.isnan(single.ci_low)
    with pytest.raises(ValueError):
        fixed_datasets_delta([np.array([])])


SCORES = pd.DataFrame(
    {"joint": [0.70, 0.60, 0.80, 0.55, 0.65, 0.75], "ogm": [0.72, 0.61, 0.79, 0.57, 0.66, 0.77],
     "aug": [0.74, 0.63, 0.82, 0.56, 0.69, 0.78], "opm": [0.71, 0.64, 0.81, 0.58, 0.64, 0.74]},
    index=[f"d{i}" for i in range(6)])


def test_mean_ranks_by_hand_with_ties_and_missing_methods():
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.7], "b": [0.8, 0.8, np.nan], "c": [0.7, 0.6, 0.9]},
                          index=["x", "y", "z"])
    ranks = mean_ranks(scores)  # row z dropped (b missing); y: a and b tie for 1st -> 1.5
    assert ranks.to_dict() == {"a": pytest.approx(1.25), "b": pytest.approx(1.75), "c": pytest.approx(3.0)}
    assert mean_ranks(scores, higher_is_better=False).to_dict() == {
        "a": pytest.approx(2.75), "b": pytest.approx(2.25), "c": pytest.approx(1.0)}
    with pytest.raises(ValueError):
        mean_ranks(pd.DataFrame({"a": [np.nan], "b": [0.5]}))


def test_friedman_matches_scipy_and_demsar():
    result = friedman_test(SCORES)
    ref = stats.friedmanchisquare(*(SCORES[c] for c in SCORES))  # no ties here: equal
    assert (result.n_datasets, result.k) == (6, 4)
    assert (result.chi2, result.p_chi2) == pytest.approx((ref.statistic, ref.pvalue))
    f = 5 * result.chi2 / (6 * 3 - result.chi2)
    assert (result.f_stat, result.p_f) == pytest.approx((f, stats.f.sf(f, 3, 15)))
    assert result.cd == pytest.approx(nemenyi_cd(4, 6))
    ranks = mean_ranks(SCORES).to_numpy()
    assert result.chi2 == pytest.approx(12 * 6 / 20 * (np.sum(ranks**2) - 4 * 25 / 4))


@pytest.mark.parametrize(("n", "quoted"), [(2, 0.075), (3, 0.010), (4, 0.0013)])
def test_friedman_with_perfect_agreement(n, quoted):
    scores = pd.DataFrame([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]] * n, columns=list("abcdef"))
    result = friedman_test(scores)
    assert result.chi2 == pytest.approx(n * 5) and result.p_chi2 == pytest.approx(quoted, rel=0.05)
    assert (result.f_stat, result.p_f) == (math.inf, 0.0)


def test_nemenyi_q_and_cd_values():
    q05 = [1.960, 2.344, 2.569, 2.728, 2.850, 2.948, 3.031, 3.102, 3.164]
    q10 = [1.645, 2.052, 2.291, 2.460, 2.589, 2.693, 2.780, 2.855, 2.920]
    for k, a, b in zip(range(2, 11), q05, q10, strict=True):
        scale = math.sqrt(k * (k + 1) / 6)  # N = 1: CD = q
        assert nemenyi_cd(k, 1) / scale == pytest.approx(a, abs=0.0005)
        assert nemenyi_cd(k, 1, alpha=0.10) / scale == pytest.approx(b, abs=0.0005)
    assert nemenyi_cd(6, 6) == pytest.approx(3.078, abs=0.0005)
    for n, cd in [(2, 5.33), (3, 4.35), (4, 3.77), (5, 3.37), (6, 3.08), (8, 2.67), (10, 2.38), (12, 2.18)]:
        assert nemenyi_cd(6, n) == pytest.approx(cd, abs=0.005)


def test_wins_ties_losses():
    assert wins_ties_losses([0.02, 0.005, -0.02, np.nan, -0.01, 0.011]) == (2, 2, 1)
    assert wins_ties_losses([0.72 - 0.71, 0.70 - 0.71], rope=0.01) == (0, 2, 0)  # float noise at the edge
    assert wins_ties_losses([0.5, -0.5], rope=0.0) == (1, 0, 1)


# imbalance


def test_shapley_two_players():
    s = shapley_two(v_av=0.80, v_a=0.70, v_v=0.45, v_none=0.20)
    assert s.phi_a == pytest.approx(0.5 * (0.50 + 0.35)) and s.phi_v == pytest.approx(0.5 * (0.25 + 0.10))
    assert s.phi_a + s.phi_v == pytest.approx(0.80 - 0.20)  # efficiency
    assert s.imbalance == pytest.approx((0.425 - 0.175) / (0.425 + 0.175))
    # the general weighted formula for M = 2: weights |S|!(M-|S|-1)!/M! = 1/2 for S = {} and S = {other}
    v = {(): 0.20, ("a",): 0.70, ("v",): 0.45, ("a", "v"): 0.80}
    assert s.phi_a == pytest.approx(0.5 * (v[("a",)] - v[()]) + 0.5 * (v[("a", "v")] - v[("v",)]))
    balanced = shapley_two(0.8, 0.5, 0.5, 0.2)
    assert balanced.phi_a == pytest.approx(balanced.phi_v) and balanced.imbalance == pytest.approx(0.0)
    assert math.isnan(shapley_two(0.5, 0.5, 0.5, 0.5).imbalance)


# per-sample


def test_wilson_interval_matches_statsmodels():
    for k, n in [(520, 744), (0, 20), (20, 20), (7, 9)]:
        assert wilson_interval(k, n) == pytest.approx(proportion_confint(k, n, alpha=0.05, method="wilson"))
    assert wilson_interval(7, 9, 0.9) == pytest.approx(proportion_confint(7, 9, alpha=0.1, method="wilson"))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_mcnemar_exact_matches_statsmodels():
    assert mcnemar_exact(30, 18) == pytest.approx(0.1114, abs=0.00005)
    for b, c in [(30, 18), (18, 30), (5, 0), (3, 4), (40, 12)]:
        assert mcnemar_exact(b, c) == pytest.approx(mcnemar([[600, b], [c, 100]], exact=True).pvalue)
    assert mcnemar_exact(0, 0) == 1.0


# CI gate


def test_shift_test_a_clear_drop_gets_the_smallest_permutation_p():
    """All 5 current values below all 20 reference values: rank sum 1+...+5 = 15, the minimum of
    C(25, 5) = 53 130 equally likely splits."""
    result = shift_test([0.70] * 5, [0.715] * 19 + [0.76], margin=0.005)
    assert result.p == pytest.approx(1 / math.comb(25, 5))
    assert result.p_gain == 1.0 and result.shift == pytest.approx(-0.015)


def test_shift_test_a_drop_of_exactly_the_margin_passes():
    # 0.71 + 0.005 ties with the nineteen 0.715s (accuracies on a 1/600 grid): a split has the
    # observed rank sum 5 x 12.5 unless it holds the 0.76, so p = P(R <= 62.5) = 20/25
    assert shift_test([0.71] * 5, [0.715] * 19 + [0.76], margin=0.005).p == pytest.approx(0.8)
    assert shift_test([0.709] * 5, [0.715] * 19 + [0.76], margin=0.005).p < 1e-4


def test_shift_test_matches_enumerating_every_split_with_ties():
    import itertools

    rng = np.random.default_rng(3)
    for _ in range(5):
        current, reference = np.round(rng.random(4) * 10) / 10, np.round(rng.random(9) * 10) / 10
        ranks = stats.rankdata(np.concatenate([current, reference]))
        sums = np.array([ranks[list(c)].sum() for c in itertools.combinations(range(13), 4)])
        observed = ranks[:4].sum()
        result = shift_test(current, reference, margin=0.0)
        assert result.p == pytest.approx(np.mean(sums <= observed + 1e-9))
        assert result.p_gain == pytest.approx(np.mean(sums >= observed - 1e-9))


def test_shift_test_one_collapsed_seed_cannot_fail_a_method():
    """The old t-test failed dlc on one seed at 302/600; ranks give that seed no more weight than
    any other value below the reference."""
    reference = [0.715] * 15 + [0.70, 0.7133, 0.72, 0.7433, 0.6117]
    assert shift_test([0.715, 0.715, 0.7133, 0.715, 302 / 600], reference, margin=0.005).p > 0.2


def test_paired_shift_test_formula_and_constant_differences():
    current = np.array([0.70, 0.69, 0.71, 0.70, 0.695])
    reference = np.array([0.72, 0.72, 0.72, 0.72, 0.72])
    d = current - reference
    result = paired_shift_test(current, reference, margin=0.005)
    se = d.std(ddof=1) / math.sqrt(5)
    assert result.p == pytest.approx(stats.t.cdf((d.mean() + 0.005) / se, 4))
    assert result.p_gain == pytest.approx(stats.t.sf((d.mean() - 0.005) / se, 4))
    # every seed moved by the same amount: past the margin -> p 0, within it -> p 1
    assert paired_shift_test(reference - 0.01, reference, 0.005).p == 0.0
    assert paired_shift_test(reference - 0.002, reference, 0.005).p == 1.0
    assert paired_shift_test([0.7], [0.7], 0.005) is None

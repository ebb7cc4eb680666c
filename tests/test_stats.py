from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mmbench.stats import paired_comparison


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


def test_a_constant_nonzero_difference_is_certain():
    c = paired_comparison([71.0, 72.0, 73.0], [70.0, 71.0, 72.0])
    assert (c.mean_diff, c.ci_low, c.ci_high, c.p_value) == (1.0, 1.0, 1.0, 0.0)


def test_needs_pairs():
    with pytest.raises(ValueError, match="equal-length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([1.0], [1.0])

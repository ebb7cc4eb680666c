"""Statistics over seeds (STATS.md): t-intervals and paired comparisons with scipy.

Seeds are the replicates. Seed s gives every method the same initialisation and batch order
(common random numbers), so method-vs-baseline differences are analysed paired by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired t-test; NaN when every difference is exactly 0


def paired_comparison(method: np.ndarray, baseline: np.ndarray, confidence: float = 0.95) -> PairedComparison:
    """Mean of method - baseline over paired seeds, its t-interval and the paired t-test p."""
    method, baseline = np.asarray(method, float), np.asarray(baseline, float)
    if method.shape != baseline.shape or method.ndim != 1 or len(method) < 2:
        raise ValueError("paired_comparison needs two equal-length 1-D arrays of at least 2 seeds")
    diff = method - baseline
    n, mean, sd = len(diff), float(diff.mean()), float(diff.std(ddof=1))
    if sd == 0:
        # scipy returns NaN (all zero) or a cancellation warning (all equal): decide by hand.
        return PairedComparison(n, mean, 0.0, mean, mean, math.nan if mean == 0 else 0.0)
    result = stats.ttest_rel(method, baseline)
    interval = result.confidence_interval(confidence)
    return PairedComparison(n, mean, sd, float(interval.low), float(interval.high), float(result.pvalue))

"""Two-player Shapley contributions of the modalities (docs/statistics.md): plain arithmetic, kept apart
from mmbench.analysis.stats so that a training run does not import scipy and pandas for it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Shapley:
    phi_a: float
    phi_v: float
    imbalance: float  # I = |φ_a - φ_v| / (|φ_a| + |φ_v|); NaN when both are 0


def shapley_two(v_av: float, v_a: float, v_v: float, v_none: float) -> Shapley:
    """Two-player Shapley values and imbalance degree (docs/statistics.md).

    v_a = accuracy with only audio present (visual masked), v_v likewise, v_none = both masked.
    φ_a = ½[(v_a - v_∅) + (v_av - v_v)], φ_v = ½[(v_v - v_∅) + (v_av - v_a)]; φ_a + φ_v = v_av - v_∅.
    """
    phi_a = 0.5 * ((v_a - v_none) + (v_av - v_v))
    phi_v = 0.5 * ((v_v - v_none) + (v_av - v_a))
    return Shapley(float(phi_a), float(phi_v), imbalance_degree(phi_a, phi_v))


def imbalance_degree(phi_a: float, phi_v: float) -> float:
    """I = |φ_a − φ_v| / (|φ_a| + |φ_v|) in [0, 1], 0 = balanced; NaN when both are 0 (docs/statistics.md)."""
    total = abs(phi_a) + abs(phi_v)
    return float(abs(phi_a - phi_v) / total) if total > 0 else math.nan

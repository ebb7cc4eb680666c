"""ARM: histogram information estimators, contributions, reweighting, label-free inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mmbench.methods.arm import (
    ARMModel,
    contributions,
    normalized_conditional_mutual_information,
    normalized_mutual_information,
)
from mmbench.models import Encoder, SmallCNN

from .conftest import tiny_config, train_steps


def _reference_nmi(x: np.ndarray, y: np.ndarray, bins: int) -> float:
    counts, _, _ = np.histogram2d(x, y, bins=bins)
    p = counts / counts.sum()
    h_x, h_y, h_xy = (stats.entropy(q.ravel()) for q in (p.sum(1), p.sum(0), p))
    return 2 * (h_x + h_y - h_xy) / (h_x + h_y)


def _reference_ncmi(x: np.ndarray, y: np.ndarray, z: np.ndarray, bins: int) -> float:
    counts, _ = np.histogramdd(np.stack([x, y, z], 1), bins=bins)
    p = counts / counts.sum()
    h = lambda q: stats.entropy(q.ravel())  # noqa: E731
    h_z, h_xz, h_yz, h_xyz = h(p.sum((0, 1))), h(p.sum(1)), h(p.sum(0)), h(p)
    return (h_xz + h_yz - h_xyz - h_z) / ((h_xz - h_z) + (h_yz - h_z))


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_nmi_matches_numpy_histograms_on_correlated_gaussians(rho):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(50_000)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(50_000)
    ours = normalized_mutual_information(torch.from_numpy(x).float(), torch.from_numpy(y).float(), 30)
    assert ours == pytest.approx(_reference_nmi(x.astype(np.float32), y.astype(np.float32), 30), abs=1e-5)


def test_mutual_information_approaches_the_gaussian_value():
    """Unnormalised check: I = -1/2 log(1 - rho^2) for a bivariate normal (nats)."""
    rng = np.random.default_rng(1)
    rho, n = 0.8, 400_000
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    counts, _, _ = np.histogram2d(x, y, bins=30)
    p = counts / counts.sum()
    mi_hist = stats.entropy(p.sum(1)) + stats.entropy(p.sum(0)) - stats.entropy(p.ravel())
    nmi = normalized_mutual_information(torch.from_numpy(x), torch.from_numpy(y), 30)
    h_sum = stats.entropy(p.sum(1)) + stats.entropy(p.sum(0))
    assert nmi * h_sum / 2 == pytest.approx(mi_hist, rel=1e-6)
    assert mi_hist == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.05)


def test_identical_and_independent_variables():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert normalized_mutual_information(x, x, 30) == pytest.approx(1.0)
    y = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    assert normalized_mutual_information(x, y, 30) < 0.02


def test_conditional_nmi_matches_numpy_and_known_binary_cases():
    rng = np.random.default_rng(2)
    z = rng.standard_normal(20_000)
    x, y = z + rng.standard_normal(20_000), z + rng.standard_normal(20_000)
    ours = normalized_conditional_mutual_information(*(torch.from_numpy(t) for t in (x, y, z)), bins=2)
    assert ours == pytest.approx(_reference_ncmi(x, y, z, 2), abs=1e-9)
    bits = torch.from_numpy(rng.integers(0, 2, 20_000)).double()
    other = torch.from_numpy(rng.integers(0, 2, 20_000)).double()
    # X = Y, independent of Z: I(X;Y|Z) = H(X|Z) = H(Y|Z), so the normalised value is 1/2
    assert normalized_conditional_mutual_information(bits, bits, other, 2) == pytest.approx(0.5, abs=1e-3)
    # X = Y = Z: nothing is left once Z is known
    assert normalized_conditional_mutual_information(bits, bits, bits, 2) == 0.0


def test_contributions_by_hand():
    g = torch.Generator().manual_seed(3)
    feat_a, feat_v, probe = (torch.randn(16, 8, generator=g) for _ in range(3))
    c_a, c_v = contributions(feat_a, feat_v, probe, p_fused=0.6, p_a=0.5, p_v=0.2)
    nmi_a = normalized_mutual_information(feat_a, probe, 30)
    nmi_v = normalized_mutual_information(feat_v, probe, 30)
    ii_a = nmi_a - normalized_conditional_mutual_information(feat_a, probe, feat_v, 2)
    ii_v = nmi_v - normalized_conditional_mutual_information(feat_v, probe, feat_a, 2)
    assert c_a == pytest.approx(0.6 * nmi_a + 0.5 * ii_a)
    assert c_v == pytest.approx(0.6 * nmi_v + 0.2 * ii_v)


def test_reweighting_amplifies_the_weaker_modality_and_splits_like_concat():
    torch.manual_seed(0)
    model = ARMModel(Encoder(SmallCNN(1, 4)), Encoder(SmallCNN(3, 4)), 5).eval()
    feat_a, feat_v = torch.randn(6, 16), torch.randn(6, 16)
    model.weights = (2.0, 0.5)  # c_a / c_v = 2: visual x2, audio x1/2
    out = model.fuse(feat_a, feat_v)
    expected = model.fc(model.head(torch.cat([2.0 * feat_v, 0.5 * feat_a], 1)))
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits_a + out.logits_v, out.logits)


def test_training_reweights_per_batch_and_inference_uses_epoch_means_without_labels():
    _, model, ctx = train_steps(tiny_config("arm"), 3)
    method = ctx.method
    logs = ctx.pop_epoch_logs()
    assert logs["c_a"] > 0 and logs["c_v"] > 0
    method.on_epoch_end(model, ctx)
    c_a, c_v = method.inference_contributions
    assert (c_a, c_v) == pytest.approx((logs["c_a"], logs["c_v"]))
    batch = next(iter(ctx.train.batches(8)))
    shuffled = type(batch)(batch.audio, batch.visual, batch.y.flip(0), batch.index)
    model.eval()
    first, second = method.predict(model, batch, ctx), method.predict(model, shuffled, ctx)
    torch.testing.assert_close(first.logits, second.logits)  # labels play no part at inference
    assert model.weights == pytest.approx((c_a / c_v, c_v / c_a))
    assert all(p.grad is None for p in model.probe.parameters())  # the probe is never trained

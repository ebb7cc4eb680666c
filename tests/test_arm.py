"""ARM: histogram information estimators, contributions, reweighting, label-free inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mmbench.config import resolve
from mmbench.methods.arm import (
    ARMModel,
    contribution_scores,
    contributions,
    fusion_weights,
    histogram,
    normalized_conditional_mutual_information,
    normalized_mutual_information,
)
from mmbench.train.models import Encoder, SmallCNN

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


@pytest.mark.parametrize("case", ["gaussian", "ties_on_edges", "constant", "integers"])
def test_device_histogram_counts_equal_numpys(case):
    """Issue 16.5: the released estimators (`necks/MI_tool.py`) start from numpy's histogram2d /
    histogramdd on the host; mmbench counts on the device. The counts must be numpy's, bin for bin, for
    30 bins in 2-D and 2 bins in 3-D (float32 features, as `.cpu().numpy()` gave the official code)."""
    rng = np.random.default_rng(["gaussian", "ties_on_edges", "constant", "integers"].index(case))
    for _ in range(25):
        n = int(rng.integers(2, 3000))
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float32)
        if case == "ties_on_edges":
            y = np.round(y * 4).astype(np.float32) / 4
        elif case == "constant":
            x = np.full(n, 1.5, np.float32)
        elif case == "integers":
            x = (np.arange(n) % 7).astype(np.float32)
        for bins, columns in ((30, [x, y]), (2, [x, y, y - x])):
            expected = np.histogramdd(np.stack(columns, 1), bins=bins)[0]
            got = histogram([torch.from_numpy(c) for c in columns], bins)
            assert np.array_equal(got.numpy(), expected), (case, n, bins)


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


# Official source: Gao-xiyuan/ARM, mmpretrain/models/necks/MI_tool.py and heads/linear_head.py.
# Worked example (every value below derived by hand): four points (x, y, z) =
# (0,0,0), (0,1,0), (1,1,1), (1,1,0); two bins per axis ([0, .5), [.5, 1]), so each point is its
# own cell and p(x,y,z) = 1/4 on those four cells.
#   p(x,z): (0,0) 1/2, (1,0) 1/4, (1,1) 1/4;  p(y,z): (0,0) 1/4, (1,0) 1/2, (1,1) 1/4;  p(z) = (3/4, 1/4)
X, Y, Z = [0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]


def _plogp(*probs: float) -> float:
    return sum(p * math.log(p) for p in probs if p > 0)


def test_official_conditional_nmi_reproduces_the_released_broadcast_by_hand():
    """MI_tool.py ~35-41: `joint / z_prob[:, None, None]`. For a 2-D (x, z) table that divides every
    cell by every z-bin; for the 3-D joint it divides p(i, j, k) by p_z[i] (the x index)."""
    # H(X|Z) as released: cells {1/2, 1/4, 1/4} over z-bin 0 (3/4) and z-bin 1 (1/4)
    h_x_z = -(_plogp(2 / 3, 1 / 3, 1 / 3) + _plogp(2, 1, 1))
    h_y_z = h_x_z  # p(y,z) holds the same three values
    # H(X,Y|Z) as released: p = 1/4 at (0,0,0), (0,1,0) over p_z[0] = 3/4; at (1,1,1), (1,1,0) over p_z[1] = 1/4
    h_xy_z = -_plogp(1 / 3, 1 / 3, 1, 1)
    expected = (h_x_z + h_y_z - h_xy_z) / (h_x_z + h_y_z)
    assert expected == pytest.approx(1.9547104, abs=1e-6)  # far above 1: not a normalised information
    got = normalized_conditional_mutual_information(X, Y, Z, bins=2, estimator="official")
    assert got == pytest.approx(expected, rel=1e-12)


def test_corrected_conditional_nmi_is_the_plug_in_estimate_by_hand():
    h_z = -_plogp(3 / 4, 1 / 4)
    h_x_z = -_plogp(1 / 2, 1 / 4, 1 / 4) - h_z
    h_y_z = h_x_z
    h_xy_z = math.log(4) - h_z
    expected = (h_x_z + h_y_z - h_xy_z) / (h_x_z + h_y_z)
    assert expected == pytest.approx(0.1370088, abs=1e-6)
    assert normalized_conditional_mutual_information(X, Y, Z, bins=2) == pytest.approx(expected, rel=1e-12)


def test_nmi_by_hand_on_two_bins():
    """x = (0,0,1,1), y = (0,1,1,1): p(0,0) = p(0,1) = 1/4, p(1,1) = 1/2; p_x = (1/2, 1/2), p_y = (1/4, 3/4)."""
    mi = (0.25 * math.log(0.25 / (0.5 * 0.25)) + 0.25 * math.log(0.25 / (0.5 * 0.75))
          + 0.5 * math.log(0.5 / (0.5 * 0.75)))
    h_x, h_y = math.log(2), -_plogp(0.25, 0.75)
    assert normalized_mutual_information(X, Y, bins=2) == pytest.approx(2 * mi / (h_x + h_y), rel=1e-12)


def test_contributions_cross_the_confidences_as_released():
    """linear_head.py ~78-79: pcmi_a = P_f NMI_a + P_v II_a, pcmi_v = P_f NMI_v + P_a II_v
    (`prediction[1]` is fc(img), `prediction[2]` fc(audio))."""
    c_a, c_v = contribution_scores(nmi_a=0.4, nmi_v=0.3, ncmi_a=1.0, ncmi_v=0.9, p_fused=0.6, p_a=0.5, p_v=0.2)
    assert c_a == pytest.approx(0.6 * 0.4 + 0.2 * (0.4 - 1.0))  # 0.12
    assert c_v == pytest.approx(0.6 * 0.3 + 0.5 * (0.3 - 0.9))  # -0.12
    g = torch.Generator().manual_seed(3)
    feat_a, feat_v, probe = (torch.randn(16, 8, generator=g) for _ in range(3))
    for estimator in ("official", "corrected"):
        c_a, c_v = contributions(feat_a, feat_v, probe, p_fused=0.6, p_a=0.5, p_v=0.2, estimator=estimator)
        nmi_a = normalized_mutual_information(feat_a, probe, 30)
        nmi_v = normalized_mutual_information(feat_v, probe, 30)
        ii_a = nmi_a - normalized_conditional_mutual_information(feat_a, probe, feat_v, 2, estimator)
        ii_v = nmi_v - normalized_conditional_mutual_information(feat_v, probe, feat_a, 2, estimator)
        assert c_a == pytest.approx(0.6 * nmi_a + 0.2 * ii_a)
        assert c_v == pytest.approx(0.6 * nmi_v + 0.5 * ii_v)


def test_official_estimator_gives_negative_contributions_on_feature_like_batches():
    """The released NCMI is about 1 on real features while the plug-in one is about 1e-4, so the
    official contributions are negative and the weight ratio follows P_v / P_a."""
    g = torch.Generator().manual_seed(0)
    feat_a, feat_v = torch.relu(torch.randn(64, 64, generator=g)), 0.5 * torch.relu(torch.randn(64, 64, generator=g))
    probe = 0.1 * torch.randn(64, 64, generator=g) + 0.3 * torch.cat([feat_v, feat_a], 1)[:, ::2]
    assert normalized_conditional_mutual_information(feat_a, probe, feat_v, 2, "official") == pytest.approx(1, abs=0.05)
    assert normalized_conditional_mutual_information(feat_a, probe, feat_v, 2, "corrected") < 0.01
    c_a, c_v = contributions(feat_a, feat_v, probe, 0.3, 0.25, 0.2, estimator="official")
    assert c_a < 0 and c_v < 0
    c_a, c_v = contributions(feat_a, feat_v, probe, 0.3, 0.25, 0.2, estimator="corrected")
    assert c_a > 0 and c_v > 0


@pytest.mark.parametrize("c_a, c_v, expected", [
    (-0.03, -0.02, (1.5, 0.02 / 0.03, False)),   # negative contributions pass as the code uses them
    (0.4, 0.2, (2.0, 0.5, False)),
    (0.5, 0.0, (10.0, 0.1, True)),                # zero c_v: the cap, by the sign of c_a
    (0.5, -0.01, (-10.0, -0.1, True)),            # |ratio| 50 clamped, sign kept
    (0.001, 0.5, (0.1, 10.0, True)),
    (0.0, 0.0, (1.0, 1.0, True)),
])
def test_fusion_weights_guard_keeps_the_sign_and_only_acts_out_of_range(c_a, c_v, expected):
    w_v, w_a, guarded = fusion_weights(c_a, c_v, 10.0)
    assert (w_v, w_a) == pytest.approx(expected[:2]) and guarded == expected[2]


def test_fusion_weights_without_guard_divide_as_released():
    assert fusion_weights(-0.03, 0.01, 0) == pytest.approx((-3.0, -1 / 3, False))
    assert math.isinf(fusion_weights(0.5, 0.0, 0)[0])


def test_head_init_is_normal_001_and_the_probe_keeps_pytorch_default():
    torch.manual_seed(0)
    model = ARMModel(Encoder(SmallCNN(1, 64)), Encoder(SmallCNN(3, 64)), 31)
    for layer in (model.head, model.fc):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert torch.count_nonzero(layer.bias) == 0
    bound = 1 / math.sqrt(model.probe.in_features)  # PyTorch's default: U(-1/sqrt(fan_in), ...)
    weight = model.probe.weight
    assert weight.abs().max().item() <= bound and weight.std().item() > 0.5 * bound / math.sqrt(3)


def test_official_profile_selects_the_official_estimator():
    assert resolve("arm", "cremad", profile="official").hparams["estimator"] == "official"
    assert resolve("arm", "cremad").hparams["estimator"] == "corrected"


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
    c_a, c_v = (float(c) for c in method.inference_contributions)
    assert (c_a, c_v) == pytest.approx((logs["c_a"], logs["c_v"]))
    batch = next(iter(ctx.train.batches(8)))
    shuffled = type(batch)(batch.audio, batch.visual, batch.y.flip(0), batch.index)
    model.eval()
    first, second = method.predict(model, batch, ctx), method.predict(model, shuffled, ctx)
    torch.testing.assert_close(first.logits, second.logits)  # labels play no part at inference
    assert tuple(float(w) for w in model.weights) == pytest.approx((c_a / c_v, c_v / c_a))
    assert "guarded" in logs and "weight_v" in logs
    assert all(p.grad is None for p in model.probe.parameters())  # the probe is never trained


def test_official_estimator_trains_with_negative_contributions():
    _, model, ctx = train_steps(tiny_config("arm", estimator="official"), 3)
    logs = ctx.pop_epoch_logs()
    assert logs["c_a"] < 0 and logs["c_v"] < 0
    assert logs["weight_v"] > 0  # the ratio of two negatives, used as it is

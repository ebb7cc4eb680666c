"""OPM: drop probabilities, masks, rescaling, no dropping at inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mmbench.config import resolve
from mmbench.data import Batch
from mmbench.method import RunContext
from mmbench.methods.opm import drop_features, drop_probability_tensor
from mmbench.registry import METHODS
from mmbench.train import engine
from mmbench.train.models import AVModel, ConcatFusion

from .conftest import tiny_config


def drop_probabilities(score_a, score_v, q_base, lam):
    q = drop_probability_tensor(torch.tensor(float(score_a), dtype=torch.float64),
                                torch.tensor(float(score_v), dtype=torch.float64), q_base, lam)
    return tuple(q.tolist())


@pytest.mark.parametrize("s_a, s_v, q_base, lam, expected", [
    (3.0, 1.0, 0.5, 0.5, (0.5 * (1 + 0.5 * math.tanh(2.0)), 0.0)),
    (1.0, 4.0, 0.4, 0.5, (0.0, 0.4 * (1 + 0.5 * math.tanh(3.0)))),
    (2.0, 2.0, 0.5, 0.5, (0.0, 0.0)),         # balanced: nobody is dropped
    (1.0, 0.0, 0.5, 0.5, (0.75, 0.0)),        # zero visual score: r_a = tanh(inf) = 1
    (0.0, 0.0, 0.5, 0.5, (0.0, 0.0)),
    (3.0, 1.0, 0.9, 1.0, (1.0, 0.0)),         # clipped to 1
])
def test_drop_probabilities_by_hand(s_a, s_v, q_base, lam, expected):
    """BML_TPAMI2024 code/models/Classifier.py:61-62 (r = tanh(relu(s_a/s_v - 1)), and the mirror),
    :67-68 (q = q_base (1 + λ r) where r > 0, else 0), :70 (clipped to [0, 1])."""
    assert drop_probabilities(s_a, s_v, q_base, lam) == pytest.approx(expected)


def test_drop_features_masks_and_rescales():
    feat_a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    feat_v = torch.ones(4, 6)
    mask_a = torch.tensor([True, False, True, False])
    mask_v = torch.tensor([True, True, False, True])
    q_a, q_v = 0.5, 0.25
    theta = (2 * 0.5 + 6 * 0.25) / 8  # feature-dimension weighted mean of the q's
    scale = 1 / (1 - theta)
    dropped_a, dropped_v = drop_features(feat_a, feat_v, mask_a, mask_v, q_a, q_v)
    torch.testing.assert_close(dropped_a, torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 6.0], [0.0, 0.0]]) * scale)
    torch.testing.assert_close(dropped_v, torch.tensor([[1.0] * 6, [1.0] * 6, [0.0] * 6, [1.0] * 6]) * scale)


def test_only_the_dominant_modality_ever_has_a_drop_probability():
    """Classifier.py:61-68: r_m > 0 needs s_m > s_other, which holds for one modality at most. So no sample
    loses both modalities (the code's removal of such samples never fires; mmbench removes none, which
    would read the device) and theta < 1 (the rescaling is finite)."""
    scores = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0)) * 10
    scores[:50] = scores[:50, :1]  # ties
    scores[50:60, 0] = 0
    for s_a, s_v in scores.double():
        q = drop_probability_tensor(s_a, s_v, 0.9, 1.0)
        assert int((q > 0).sum()) <= 1
        theta = (512 * q[0] + 512 * q[1]) / 1024
        assert theta < 1


class FixedEncoder(torch.nn.Module):
    """Returns the batch's prepared features: audio a one-hot of the label, visual zeros."""

    def __init__(self, which):
        super().__init__()
        self.which = which

    def forward(self, x):
        return x.flatten(1)


def _audio_dominant_model_and_batch(n=4000):
    y = torch.arange(n) % 6
    audio = F.one_hot(y, 6).float()[:, None, :, None] * 4  # (n, 1, 6, 1) -> 6 features
    visual = torch.zeros(n, 1, 6)
    fusion = ConcatFusion(6, 6, 6)
    with torch.no_grad():
        fusion.fc.weight.zero_()
        fusion.fc.weight[:, :6] = torch.eye(6)
        fusion.fc.bias.zero_()
    model = AVModel(FixedEncoder("a"), FixedEncoder("v"), fusion)
    return model, Batch(audio, visual, y, torch.arange(n))


def _opm(epoch, **overrides):
    cfg = tiny_config("opm", **overrides)
    ctx = RunContext(cfg, 6, torch.device("cpu"), engine.make_generators(0, torch.device("cpu")), epoch=epoch)
    return METHODS.get("opm")(ctx), ctx


def test_forward_drops_the_dominant_modality_at_the_expected_rate():
    model, batch = _audio_dominant_model_and_batch()
    method, ctx = _opm(epoch=1, warmup_epochs=1, p_exe=1.0)
    p_true = math.exp(4) / (math.exp(4) + 5)
    q_a, q_v = drop_probabilities(len(batch) * p_true, len(batch) / 6, 0.5, 0.5)
    assert q_a > 0.7 and q_v == 0.0
    out = method.forward(model, batch, ctx)
    assert out.keep is None  # visual is never dropped, so no sample loses both
    dropped = (out.logits_a.abs().sum(1) == 0)  # a dropped audio feature leaves only b/2 = 0
    test = stats.binomtest(int(dropped.sum()), len(batch), q_a)
    assert test.pvalue > 0.001
    scale = 1 / (1 - q_a / 2)
    torch.testing.assert_close(out.logits_a[~dropped], F.one_hot(batch.y[~dropped], 6).float() * 4 * scale)
    logs = ctx.pop_epoch_logs()
    assert logs["q_a"] == pytest.approx(q_a) and logs["executed"] == 1.0


def test_loss_uses_only_the_kept_samples():
    model, batch = _audio_dominant_model_and_batch(12)
    method, ctx = _opm(epoch=0, warmup_epochs=0)
    out = model(batch.audio, batch.visual)
    out.keep = torch.tensor([True, False] * 6)
    out.logits = out.logits[out.keep]
    torch.testing.assert_close(method.loss(out, batch, ctx), F.cross_entropy(out.logits, batch.y[out.keep]))


@pytest.mark.parametrize("epoch, p_exe", [(0, 1.0), (3, 0.0)])
def test_no_dropping_in_warmup_or_when_not_executed(epoch, p_exe):
    model, batch = _audio_dominant_model_and_batch(60)
    method, ctx = _opm(epoch=epoch, warmup_epochs=1, p_exe=p_exe)
    out = method.forward(model, batch, ctx)
    assert out.keep is None
    torch.testing.assert_close(out.logits, model(batch.audio, batch.visual).logits)


def test_inference_never_drops():
    model, batch = _audio_dominant_model_and_batch(60)
    method, ctx = _opm(epoch=5, warmup_epochs=0, p_exe=1.0)
    torch.testing.assert_close(method.predict(model, batch, ctx).logits, model(batch.audio, batch.visual).logits)


def test_executed_fraction_follows_p_exe():
    model, batch = _audio_dominant_model_and_batch(30)
    method, ctx = _opm(epoch=2, warmup_epochs=0, p_exe=0.7)
    for _ in range(400):
        method.forward(model, batch, ctx)
    executed = ctx.pop_epoch_logs()["executed"]
    assert stats.binomtest(round(executed * 400), 400, 0.7).pvalue > 0.001


def _two_sample_gradients(theta_grad):
    """Gradients w.r.t. the features of one executed OPM step on a fixed 2-sample batch."""
    f_a = torch.tensor([[1.0], [0.5]], requires_grad=True)
    f_v = torch.tensor([[0.4], [-0.6]], requires_grad=True)
    fusion = ConcatFusion(1, 1, 2)
    with torch.no_grad():
        fusion.fc.weight.copy_(torch.tensor([[2.0, 0.5], [-1.0, 0.3]]))  # columns: audio, visual
        fusion.fc.bias.copy_(torch.tensor([0.2, -0.2]))
    model = AVModel(FixedEncoder("a"), FixedEncoder("v"), fusion)
    method, ctx = _opm(epoch=1, warmup_epochs=0, p_exe=1.0, theta_grad=theta_grad)
    batch = Batch(f_a, f_v, torch.tensor([0, 1]), torch.arange(2))
    out = method.forward(model, batch, ctx)
    loss = method.loss(out, batch, ctx)
    loss.backward()
    return f_a.grad.clone(), f_v.grad.clone(), loss.detach(), method.theta


def test_official_theta_gradient_by_hand_on_two_samples():
    """BML_TPAMI2024 code/models/Classifier.py ~16-21: `backward` returns theta as theta's gradient;
    theta = (d_a q_a + d_v q_v) / (d_a + d_v) (~39-41), q from calcu_q (~58-72), the scores from the
    un-detached features through detached fusion weights (~112-147). So each feature gets an extra
    theta * dtheta/dfeature. Hand derivation (2 classes: p = sigmoid(z_y - z_other)):
      audio  z_a = f_a w_a + b/2, w_a = (2, -1): margins d = 3 f_a (y=0), -3 f_a (y=1) -> 3.2, -1.7
      visual z_v = f_v w_v + b/2, w_v = (.5, .3): margins 0.2 f_v + 0.4 (y=0), -0.2 f_v - 0.4 (y=1)
      s_m = sum_i sigmoid(d_i); u = s_a / s_v - 1 > 0, q_a = .5 (1 + .5 tanh u), q_v = 0, theta = q_a / 2
      dtheta/df_a,i = .5 * .25 sech^2(u) / s_v * sigma'(d_i) * (+-3)
      dtheta/df_v,i = .5 * .25 sech^2(u) * (-s_a / s_v^2) * sigma'(d_i) * (+-0.2)"""
    def sig(x):
        return 1 / (1 + math.exp(-x))

    d_a, d_v = (3.2, -1.7), (0.28, -0.08)
    s_a, s_v = sum(map(sig, d_a)), sum(map(sig, d_v))
    u = s_a / s_v - 1
    theta = 0.5 * (1 + 0.5 * math.tanh(u)) / 2
    common = 0.5 * 0.25 / math.cosh(u) ** 2
    dtheta_a = [common / s_v * sig(d) * (1 - sig(d)) * slope for d, slope in zip(d_a, (3.0, -3.0), strict=True)]
    dtheta_v = [common * (-s_a / s_v**2) * sig(d) * (1 - sig(d)) * slope
                for d, slope in zip(d_v, (0.2, -0.2), strict=True)]

    grad_a, grad_v, loss, method_theta = _two_sample_gradients("official")
    plain_a, plain_v, plain_loss, no_theta = _two_sample_gradients("none")
    assert no_theta is None and float(method_theta.detach()) == pytest.approx(theta, rel=1e-5)
    torch.testing.assert_close(loss, plain_loss)  # the added term has value 0
    torch.testing.assert_close((grad_a - plain_a).flatten(), torch.tensor([theta * g for g in dtheta_a]),
                               rtol=1e-4, atol=1e-8)
    torch.testing.assert_close((grad_v - plain_v).flatten(), torch.tensor([theta * g for g in dtheta_v]),
                               rtol=1e-4, atol=1e-8)


def test_official_profile_reproduces_the_theta_gradient():
    assert resolve("opm", "kinetics-sounds", profile="official").hparams["theta_grad"] == "official"
    assert resolve("opm", "cremad").hparams["theta_grad"] == "none"

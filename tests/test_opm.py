"""OPM: drop probabilities, masks, rescaling, removed samples, no dropping at inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mmbench import engine
from mmbench.data import Batch
from mmbench.method import RunContext
from mmbench.methods.opm import drop_features, drop_probabilities
from mmbench.models import AVModel, ConcatFusion
from mmbench.registry import METHODS

from .conftest import tiny_config


@pytest.mark.parametrize("s_a, s_v, q_base, lam, expected", [
    (3.0, 1.0, 0.5, 0.5, (0.5 * (1 + 0.5 * math.tanh(2.0)), 0.0)),
    (1.0, 4.0, 0.4, 0.5, (0.0, 0.4 * (1 + 0.5 * math.tanh(3.0)))),
    (2.0, 2.0, 0.5, 0.5, (0.0, 0.0)),         # balanced: nobody is dropped
    (1.0, 0.0, 0.5, 0.5, (0.75, 0.0)),        # zero visual score: r_a = tanh(inf) = 1
    (0.0, 0.0, 0.5, 0.5, (0.0, 0.0)),
    (3.0, 1.0, 0.9, 1.0, (1.0, 0.0)),         # clipped to 1
])
def test_drop_probabilities_by_hand(s_a, s_v, q_base, lam, expected):
    assert drop_probabilities(s_a, s_v, q_base, lam) == pytest.approx(expected)


def test_drop_features_masks_rescales_and_removes_all_dropped_samples():
    feat_a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    feat_v = torch.ones(4, 6)
    mask_a = torch.tensor([True, False, True, False])
    mask_v = torch.tensor([True, True, False, False])  # sample 3 loses both modalities
    q_a, q_v = 0.5, 0.25
    theta = (2 * 0.5 + 6 * 0.25) / 8  # feature-dimension weighted mean of the q's
    scale = 1 / (1 - theta)
    dropped_a, dropped_v, keep = drop_features(feat_a, feat_v, mask_a, mask_v, q_a, q_v)
    assert keep.tolist() == [True, True, True, False]
    torch.testing.assert_close(dropped_a, torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]) * scale)
    torch.testing.assert_close(dropped_v, torch.tensor([[1.0] * 6, [1.0] * 6, [0.0] * 6]) * scale)


def test_drop_features_refuses_to_drop_everything():
    with pytest.raises(ValueError, match="drop every feature"):
        drop_features(torch.ones(2, 2), torch.ones(2, 2), torch.zeros(2, dtype=torch.bool),
                      torch.zeros(2, dtype=torch.bool), 1.0, 1.0)


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
    assert out.keep.all()  # visual is never dropped, so no sample loses both
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


@pytest.mark.slow
def test_opm_raises_the_slow_modality_and_the_fused_accuracy_on_synthetic(synthetic_run):
    gains = []
    for seed in (0, 1, 2):
        joint, opm = synthetic_run("joint", seed), synthetic_run("opm", seed)
        gains.append(opm["best_val_acc_head_v"] - joint["best_val_acc_head_v"])
        assert gains[-1] > 0, f"seed {seed}"
        assert opm["best_val_acc"] > joint["best_val_acc"], f"seed {seed}"
    assert sum(gains) / len(gains) > 0.2

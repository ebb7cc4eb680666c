"""LFM, fitted schedule, against the official code (njustkmg/NeurIPS24-LFM @ad44fa0, `Crema_epoch.py`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import ConfigError, resolve
from mmbench.methods.lfm import alignment, fitted_weights

from .conftest import assert_resumes_identical, tiny_config, training_setup


@pytest.mark.parametrize(("epoch", "k0"), [(0, 0.204624), (1, 0.208099), (10, 0.247759), (20, 0.300887),
                                           (50, 0.436681), (100, 0.539155), (150, 0.821314), (199, 0.915989)])
def test_fitted_weights_equal_the_polynomial_of_lines_47_53(epoch, k0):
    """k_0(e) = sum_i c_i e^i with the coefficients of `Crema_epoch.py` line 49 (values of METHODS2 §15.4,
    recomputed with numpy.polyval); k_1 = 1 - k_0, as line 50's coefficients give."""
    got0, got1 = fitted_weights(epoch)
    assert got0 == pytest.approx(k0, abs=5e-7)
    assert got0 + got1 == pytest.approx(1.0, abs=1e-12)


def test_alignment_is_the_jensen_shannon_divergence_by_hand():
    """p = softmax(0, 0) = (1/2, 1/2), q = softmax(ln 3, 0) = (3/4, 1/4), m = (5/8, 3/8):
    JS = (KL(m||p) + KL(m||q)) / 2 (lines 38-45: kl_div(p.log(), m) is KL(m || p))."""
    kl_mp = 5 / 8 * math.log((5 / 8) / (1 / 2)) + 3 / 8 * math.log((3 / 8) / (1 / 2))
    kl_mq = 5 / 8 * math.log((5 / 8) / (3 / 4)) + 3 / 8 * math.log((3 / 8) / (1 / 4))
    js = alignment(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert js.item() == pytest.approx((kl_mp + kl_mq) / 2, rel=1e-6)
    assert js.item() == pytest.approx(0.034841, abs=1e-6)
    same = torch.randn(5, 4)
    assert alignment(same, same).item() == pytest.approx(0.0, abs=1e-7)


def test_late_fusion_logits_and_loss_of_lines_68_72():
    cfg = tiny_config("lfm")
    dataset, splits, ctx, model, optimizer = training_setup(cfg)
    method = ctx.method
    ctx.epoch = 37
    method.on_epoch_start(model, ctx)
    batch = dataset.transform(next(splits.train.batches(8)), train=False, generator=ctx.generator("augment"))
    out = method.forward(model, batch, ctx)
    feat_a, feat_v = model.encode(batch.audio, batch.visual)
    h_a, h_v = model.head_a(feat_a), model.head_v(feat_v)
    torch.testing.assert_close(out.logits, 0.5 * h_v + 0.5 * h_a)
    torch.testing.assert_close(out.logits_a, h_a)
    k0, k1 = fitted_weights(37)
    expected = 2 * (k0 * F.cross_entropy(0.5 * h_v + 0.5 * h_a, batch.y) + k1 * alignment(h_a, h_v))
    torch.testing.assert_close(method.loss(out, batch, ctx), expected)
    assert method.diagnostics() == {"k0": k0, "k1": k1}
    assert not hasattr(model, "fusion")  # separate heads, no fusion layer (model/AudioVideo.py:54-67)


def test_official_profile_is_crema_json():
    cfg = resolve("lfm", "cremad", 0, "official")
    assert (cfg.lr, cfg.lr_step, cfg.lr_step_at, cfg.epochs, cfg.batch_size, cfg.data["audio_frontend"]) == \
        (1e-2, 70, "epoch_start", 200, 64, "aug-stft")
    with pytest.raises(ConfigError, match="no official settings for dataset kinetics-sounds"):
        resolve("lfm", "kinetics-sounds", 0, "official")


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("lfm", tmp_path)

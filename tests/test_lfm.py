"""LFM against the official code (njustkmg/NeurIPS24-LFM @ad44fa0): the fitted schedule (`Crema_epoch.py`) and
the learned one (`Crema_epoch_learnable.py`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import ConfigError, resolve
from mmbench.methods import lfm
from mmbench.methods.lfm import LateFusion, alignment, alpha_gradient, fitted_weights, learned_weight_step

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


def test_learned_weight_step_of_lines_87_94():
    # k_1 = 0.95 - 1e-4 * 100 = 0.94, k_0 = 0.06; clipped to [0.05, 0.95]
    assert learned_weight_step(0.95, 100.0, 1e-4) == pytest.approx((0.06, 0.94))
    assert learned_weight_step(0.95, -1e4, 1e-4) == pytest.approx((0.05, 0.95))
    assert learned_weight_step(0.5, 1e4, 1e-4) == pytest.approx((0.95, 0.05))


class _Linear(torch.nn.Linear):
    out_dim = 2


def test_alpha_gradient_is_the_hessian_vector_product_of_lines_66_85():
    """mean over the first parameter tensor of H(k_0 L_cls + k_1 L_align) . grad L_cls, checked against the full
    Hessian of a tiny late-fusion model (linear encoders) computed independently by torch.autograd.functional."""
    torch.manual_seed(0)
    model = LateFusion(_Linear(3, 2), _Linear(3, 2), num_classes=2)
    batch = type("B", (), {"audio": torch.randn(5, 3), "visual": torch.randn(5, 3), "y": torch.tensor([0, 1, 1, 0, 1])})
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def losses(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[start:start + shape.numel()].view(shape)
            start += shape.numel()
        out = torch.func.functional_call(model, params, (batch.audio, batch.visual))
        return F.cross_entropy(out.logits, batch.y), alignment(out.logits_a, out.logits_v)

    k0, k1 = 0.3, 0.7
    hessian = torch.autograd.functional.hessian(lambda t: k0 * losses(t)[0] + k1 * losses(t)[1], flat)
    cls_grad = torch.autograd.functional.jacobian(lambda t: losses(t)[0], flat)
    first = shapes[0].numel()  # the audio encoder's weight, as the release's audio stem convolution
    expected = (hessian @ cls_grad)[:first].mean()
    assert float(alpha_gradient(model, batch, k0, k1)) == pytest.approx(float(expected), rel=1e-5, abs=1e-9)


def test_learned_schedule_moves_the_weights_before_every_epoch(monkeypatch):
    """Starts at (0.05, 0.95) (line 238); lr_alpha 1e-4 halves at epochs 20, 40 (lines 87-88); the model is in
    training mode for the first update and in evaluation mode after (lines 240-243 and 135)."""
    _, splits, ctx, model, _ = training_setup(tiny_config("lfm", schedule="learned"))
    method = ctx.method
    assert (method.k0, method.k1) == (0.05, 0.95)
    modes, batches = [], []

    def fake_gradient(model, batch, k0, k1):
        modes.append(model.training)
        batches.append(batch)
        return torch.tensor(50.0)

    monkeypatch.setattr(lfm, "alpha_gradient", fake_gradient)
    k1 = 0.95
    for epoch, lr_alpha in ((0, 1e-4), (1, 1e-4), (20, 5e-5), (41, 2.5e-5)):
        ctx.epoch = epoch
        method.on_epoch_start(model, ctx)
        k1 -= lr_alpha * 50.0
        assert (method.k0, method.k1) == pytest.approx((1 - k1, k1)), epoch
        assert model.training  # back to training for the epoch
    assert modes == [True, False, False, False]
    # one fixed batch of 8 validation rows, drawn from the seed: a rebuilt run (a resume) draws the same
    assert all(b is batches[0] for b in batches) and len(batches[0].y) == 8
    _, _, again, _, _ = training_setup(tiny_config("lfm", schedule="learned"))
    rebuilt = again.method.heldout_batch(again)
    torch.testing.assert_close(rebuilt.audio, batches[0].audio)
    torch.testing.assert_close(rebuilt.visual, batches[0].visual)
    assert torch.isin(batches[0].y, splits.val.y).all()


def test_learned_schedule_runs_and_resumes_identical(tmp_path):
    assert_resumes_identical("lfm", tmp_path, schedule="learned")

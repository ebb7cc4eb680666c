"""MMPareto against the official code (GeWu-Lab/MMPareto_ICML2024 @a339db3): hand values of its weights and
rescale (METHODS2 §1.5), and its training step written out with autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import resolve
from mmbench.methods.mmpareto import pareto_gradient, pareto_weights

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_conflicting_gradients_take_the_min_norm_point_at_the_larger_magnitude():
    """`min_norm_solvers.py` lines 26-28 and `MMPareto.py` lines 186-196: g_mm = (1, 0), g_uni = (-1, 1): cos < 0,
    c = (2 + 1) / (1 + 2 + 2) = 0.6, g_new = 2 (0.6 g_mm + 0.4 g_uni) = (0.4, 0.8), g_sum = (0, 1),
    d = 1 / sqrt(0.8) > 1 -> 1.5 d g_new."""
    g_mm, g_uni, g_sum = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([0.0, 1.0])
    k0, k1 = pareto_weights(g_mm, g_uni)
    assert (float(k0), float(k1)) == pytest.approx((0.6, 0.4))
    grad = pareto_gradient(g_mm, g_uni, g_sum, k0, k1, gamma=1.5)
    torch.testing.assert_close(grad, torch.tensor([0.670820, 1.341641]), atol=1e-6, rtol=0)


def test_agreeing_gradients_take_half_each_so_one_and_a_half_times_the_sum():
    g_mm, g_uni = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    k0, k1 = pareto_weights(g_mm, g_uni)
    assert (float(k0), float(k1)) == (0.5, 0.5)  # lines 162-164
    grad = pareto_gradient(g_mm, g_uni, g_mm + g_uni, k0, k1, gamma=1.5)
    torch.testing.assert_close(grad, torch.tensor([3.0, 1.5]))


def test_the_solver_edge_case_of_line_17():
    # a zero multimodal gradient: cos = 0 (no agreement) and <g_mm, g_uni> >= <g_mm, g_mm> -> c = 0.999
    k0, k1 = pareto_weights(torch.zeros(2), torch.tensor([1.0, 0.0]))
    assert (float(k0), float(k1)) == pytest.approx((0.999, 0.001), abs=1e-6)


def test_a_training_step_rescales_each_encoder_tensor_and_leaves_the_heads_the_summed_gradient():
    """The step written out: three gradients (lines 117-147), weights per encoder from flat cosines (149-174),
    the sum's backward (180-181), the per-tensor rescale of encoder tensors only (184-207)."""
    dataset, splits, ctx, model, _ = training_setup(tiny_config("mmpareto"))
    batch = dataset.transform(next(splits.train.batches(16)), train=False, generator=ctx.generator("augment"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the gradients, moves nothing
    ctx.method.train_step(model, batch, optimizer, ctx)
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    out = model(batch.audio, batch.visual)
    losses = [F.cross_entropy(z, batch.y) for z in (out.logits, out.logits_a, out.logits_v)]
    params = dict(model.named_parameters())
    g_sum = dict(zip(params, torch.autograd.grad(sum(losses), list(params.values()), retain_graph=True), strict=True))
    for m, uni_loss in (("a", losses[1]), ("v", losses[2])):
        names = [n for n in params if n.startswith(f"{'audio' if m == 'a' else 'visual'}_encoder.")]
        mm = torch.autograd.grad(losses[0], [params[n] for n in names], retain_graph=True)
        uni = torch.autograd.grad(uni_loss, [params[n] for n in names], retain_graph=True)
        flat_mm, flat_uni = torch.cat([g.flatten() for g in mm]), torch.cat([g.flatten() for g in uni])
        cos = float(flat_mm @ flat_uni / (flat_mm.norm() * flat_uni.norm()))
        if cos > 0:
            k0 = 0.5
        else:
            v11, v12, v22 = float(flat_mm @ flat_mm), float(flat_mm @ flat_uni), float(flat_uni @ flat_uni)
            k0 = (v22 - v12) / (v11 + v22 - 2 * v12)
        for name, g_mm, g_uni in zip(names, mm, uni, strict=True):
            new = 2 * k0 * g_mm + 2 * (1 - k0) * g_uni
            d = float(g_sum[name].norm() / new.norm())
            torch.testing.assert_close(got[name], 1.5 * max(d, 1.0) * new, rtol=1e-4, atol=1e-7)
    for name in ("head_a.weight", "head_v.bias", "fusion.fc.weight"):
        torch.testing.assert_close(got[name], g_sum[name])


def test_slice_heads_train_the_unimodal_losses_on_the_concat_heads_slices():
    _, _, ctx, model, _ = training_setup(tiny_config("mmpareto", heads="slice"))
    assert not hasattr(model, "head_a")
    assert ctx.method.logits_kind(ctx.cfg) == "fusion-slice"
    assert ctx.method.logits_kind(tiny_config("mmpareto")) == "auxiliary-head"


def test_official_profile_follows_the_release():
    cfg = resolve("mmpareto", "cremad", 0, "official")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.linear_init,
            cfg.data["frames"], cfg.data["class_order"], cfg.data["audio_frontend"]) == (
        "sgd", 2e-3, 0.9, 1e-4, 50, 64, "pytorch", 2, "sorted", "fbank")
    assert cfg.lr_step >= cfg.epochs  # the released StepLR is never stepped
    assert cfg.hparams["gamma"] == 1.5


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("mmpareto", tmp_path)

"""MLA against the official code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ab6c184):
hand values of its gating and projection, and its two-turn step written out with autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import resolve
from mmbench.methods.mla import entropy_gates, owm_update

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_per_sample_gates_by_hand():
    """METHODS2 §3.5: z_a = (2, 0, 0), z_v = 0: H_a = 0.665573, H_v = ln 3 -> w_a = 0.606599."""
    w_a, w_v = entropy_gates(torch.tensor([[2.0, 0.0, 0.0]]), torch.zeros(1, 3), "sample")
    assert (float(w_a), float(w_v)) == pytest.approx((0.606599, 0.393401), abs=1e-6)


def test_batch_gates_of_lines_65_87_take_the_softmax_over_the_batch_axis():
    z_a, z_v = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.zeros(2, 2)
    p = 1 / (1 + math.exp(-2))  # the first column of z_a over the batch: (p, 1 - p); the second: (1/2, 1/2)
    h_a = -(p * math.log(p) + (1 - p) * math.log(1 - p)) + math.log(2)
    h_v = 2 * math.log(2)
    w_a, w_v = entropy_gates(z_a, z_v, "batch")
    expected_a = math.exp(h_v - h_a) / (math.exp(h_v - h_a) + 1)
    assert w_a.shape == () and (float(w_a), float(w_v)) == pytest.approx((expected_a, 1 - expected_a), abs=1e-6)


def test_the_projection_update_as_written_in_utils_lines_26_37():
    """P = I, r = (1, 0), step 0: alpha = 0.1, k = (1, 0)^T, k r = [[1, 0], [0, 0]] (element-wise denominator
    alpha + k r = [[1.1, 0.1], [0.1, 0.1]]), P - k k^T / (alpha + k r) = diag(1 - 1/1.1, 1), then / ||.||_F."""
    projection = owm_update(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), step=0, steps_per_epoch=10)
    first = 1 - 1 / 1.1
    norm = math.hypot(first, 1.0)
    torch.testing.assert_close(projection, torch.tensor([[first / norm, 0.0], [0.0, 1 / norm]]))


def _setup(**hparams):
    dataset, splits, ctx, model, _ = training_setup(tiny_config("mla", **hparams))
    batch = dataset.transform(next(splits.train.batches(16)), train=False, generator=ctx.generator("augment"))
    return ctx, model, batch


def test_the_audio_turn_steps_first_and_the_visual_turn_uses_the_stepped_head():
    """`main.py` lines 428-452 with plain SGD (lr 0.1): audio encoder and head step on CE(h(f_a)); the visual
    encoder and the head step on CE(h'(f_v)), h' the head after the audio step."""
    ctx, model, batch = _setup()
    lr = 0.1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    feat_a, feat_v = model.encode(batch.audio, batch.visual)
    audio_params = list(model.audio_encoder.parameters()) + [model.head.weight, model.head.bias]
    g_audio = torch.autograd.grad(F.cross_entropy(model.head(feat_a), batch.y), audio_params)
    head_after_audio = [model.head.weight - lr * g_audio[-2], model.head.bias - lr * g_audio[-1]]
    visual_params = list(model.visual_encoder.parameters())
    z_v = F.linear(feat_v, *head_after_audio)
    g_visual = torch.autograd.grad(F.cross_entropy(z_v, batch.y), visual_params + head_after_audio)

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    out, loss = ctx.method.train_step(model, batch, optimizer, ctx)
    for (name, param), grad in zip(model.audio_encoder.named_parameters(), g_audio, strict=False):
        torch.testing.assert_close(param, before[f"audio_encoder.{name}"] - lr * grad)
    for (name, param), grad in zip(model.visual_encoder.named_parameters(), g_visual, strict=False):
        torch.testing.assert_close(param, before[f"visual_encoder.{name}"] - lr * grad)
    torch.testing.assert_close(model.head.weight, head_after_audio[0] - lr * g_visual[-2])
    assert all(p.grad is None for p in model.parameters())  # lines 468-470
    torch.testing.assert_close(out.logits, 0.5 * out.logits_a + 0.5 * out.logits_v)


@pytest.mark.parametrize("idle", [False, True])
def test_idle_momentum_moves_the_audio_encoder_again_in_the_visual_turn(idle):
    """Under PyTorch 1.8 the visual turn's step sees the audio encoder's zeroed gradient: momentum 0.9 moves it
    by lr 0.9 g once more (total lr 1.9 g); PyTorch 2's None gradient skips it (lr g)."""
    ctx, model, batch = _setup(idle_momentum=idle)
    lr = 0.1
    param = next(model.audio_encoder.parameters())
    before = param.detach().clone()
    feat_a, _ = model.encode(batch.audio, batch.visual)
    grad = torch.autograd.grad(F.cross_entropy(model.head(feat_a), batch.y), param)[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ctx.method.train_step(model, batch, optimizer, ctx)
    torch.testing.assert_close(param, before - lr * grad * (1.9 if idle else 1.0))


def test_owm_on_skips_the_first_call_then_projects_the_heads_weight_gradient():
    ctx, model, batch = _setup(owm="on")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.method.train_step(model, batch, optimizer, ctx)  # two calls: the first skipped, the second projects
    projection = ctx.method.projection
    assert projection is not None and projection.shape == (model.head.in_features,) * 2
    assert float(projection.norm()) == pytest.approx(1.0)
    ctx_off, _, _ = _setup()
    assert ctx_off.method.projection is None


@pytest.mark.parametrize("gating", ["static", "batch", "sample"])
def test_evaluation_fuses_the_shared_heads_logits(gating):
    ctx, model, batch = _setup(gating=gating)
    model.eval()
    with torch.no_grad():
        out = ctx.method.predict(model, batch, ctx)
        z_a, z_v = model.head(model.audio_encoder(batch.audio)), model.head(model.visual_encoder(batch.visual))
    w_a, w_v = (0.5, 0.5) if gating == "static" else entropy_gates(z_a, z_v, gating)
    torch.testing.assert_close(out.logits, w_a * z_a + w_v * z_v)
    torch.testing.assert_close(out.logits_a, z_a)


def test_official_profile_follows_the_readme_command():
    cfg = resolve("mla", "cremad", 0, "official")
    assert (cfg.optimizer, cfg.lr, cfg.lr_step, cfg.epochs, cfg.batch_size, cfg.eval_batch_size,
            cfg.data["frames"], cfg.data["class_order"], cfg.data["audio_frontend"], cfg.hparams["idle_momentum"],
            cfg.hparams["owm"], cfg.hparams["gating"]) == (
        "sgd", 1e-3, 70, 100, 64, 64, 3, "sorted", "fbank", True, "off", "static")


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("mla", tmp_path)

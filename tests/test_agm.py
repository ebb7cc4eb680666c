"""AGM against BalanceBenchmark's implementation (`balancemm/trainer/AGM_trainer.py` @4c1482f; the authors released
no training code): hand values of the coefficients (METHODS2 §4.5) and the training step written out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.methods.agm import modulation_coefficients, response_scores

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_coefficients_of_lines_569_573_by_hand():
    """S = (1.2, 0.8), Sbar = (1, 1), alpha 0.1: ratio_a = e^0.4, ratio_v = e^-0.4, coeff = exp(0.1 (1 - ratio))."""
    coeffs = modulation_coefficients(torch.tensor([1.2, 0.8]), torch.tensor([1.0, 1.0]), alpha=0.1, clamp=7.0)
    torch.testing.assert_close(coeffs, torch.tensor([0.952007, 1.033517]), atol=1e-6, rtol=0)
    # the clamp: a target far above the ratio is capped at 7 inside the exponential
    capped = modulation_coefficients(torch.tensor([0.0, 0.0]), torch.tensor([3.0, 0.0]), alpha=1.0, clamp=7.0)
    assert float(capped[0]) == pytest.approx(math.exp(7.0))


def test_scores_of_lines_553_561_cap_the_log_at_1e_minus_8():
    y = torch.tensor([0, 1])
    responses = {"a": torch.tensor([[0.0, 0.0], [0.0, 0.0]]), "v": torch.tensor([[0.0, 100.0], [0.0, 0.0]])}
    scores = response_scores(responses, y)
    # audio: -log(1/2) each; visual: sample 0 has p = e^-100 < 1e-8 -> -log 1e-8, sample 1 -log(1/2)
    torch.testing.assert_close(scores, torch.tensor([math.log(2), (-math.log(1e-8) + math.log(2)) / 2]))


def test_a_training_step_scales_each_encoders_weight_gradients_and_updates_the_running_scores():
    dataset, splits, ctx, model, _ = training_setup(tiny_config("agm", alpha=0.5))
    batch = dataset.transform(next(splits.train.batches(16)), train=False, generator=ctx.generator("augment"))
    method = ctx.method
    method.running = torch.tensor([0.3, 0.9])
    ctx.epoch, ctx.step = 1, 2

    model.eval()
    with torch.no_grad():  # lines 225-268: eval mode, each modality's input zeroed in turn
        full = model(batch.audio, batch.visual).logits
        r_a = (full - model(torch.zeros_like(batch.audio), batch.visual).logits) / 2
        r_v = (full - model(batch.audio, torch.zeros_like(batch.visual)).logits) / 2
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = dict(zip(dict(model.named_parameters()), torch.autograd.grad(
        F.cross_entropy(model(batch.audio, batch.visual).logits, batch.y), list(model.parameters())), strict=True))
    model.load_state_dict(state)  # the batch-norm statistics as before that forward
    scores = [float(-F.log_softmax(r, 1).gather(1, batch.y[:, None]).mean()) for r in (r_a, r_v)]
    mean, running_mean = sum(scores) / 2, (0.3 + 0.9) / 2
    coeffs = [math.exp(0.5 * min(math.exp(2 * (bar - running_mean)) - math.exp(2 * (s - mean)), 7))
              for s, bar in zip(scores, (0.3, 0.9), strict=True)]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    method.train_step(model, batch, optimizer, ctx)
    for name, param in model.named_parameters():
        scale = 1.0
        if name.startswith(("audio_encoder.", "visual_encoder.")) and param.ndim > 1:
            scale = coeffs[0] if name.startswith("audio") else coeffs[1]
        torch.testing.assert_close(param.grad, scale * grads[name], rtol=1e-4, atol=1e-7)
    t = 1 * ctx.steps_per_epoch + 2 + 1
    expected = [bar * (t - 1) / t + s / t for bar, s in zip((0.3, 0.9), scores, strict=True)]
    torch.testing.assert_close(method.running, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_the_whole_gradient_is_clipped_to_5_only_when_a_fusion_weight_gradient_passes_5():
    _, _, ctx, model, _ = training_setup(tiny_config("agm"))
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.01)
    ctx.method._clip_if_the_fusion_gradient_is_large(model)
    assert all(torch.all(p.grad == 0.01) for p in model.parameters())  # below the limit: untouched
    model.fusion.fc.weight.grad[0, 0] = -6.0
    ctx.method._clip_if_the_fusion_gradient_is_large(model)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(total) == pytest.approx(5.0, rel=1e-5)


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("agm", tmp_path)

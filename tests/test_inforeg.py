"""InfoReg against the official code (GeWu-Lab/InfoReg_CVPR2025 @939b2ed, `main.py`): hand values of its
strengths and window gate (METHODS2 §16.4), and its proximal regulation and Fisher trace written out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import resolve
from mmbench.methods.inforeg import regulation_strengths, window_gate

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_strengths_of_lines_465_485_by_hand():
    beta_a, beta_v = regulation_strengths(torch.tensor(1.5), torch.tensor(1.0), True, 0.95, 0.10)
    assert (float(beta_a), float(beta_v)) == pytest.approx((0.95 * math.exp(math.tanh(0.5)), 0.0))
    assert float(beta_a) == pytest.approx(1.508060, abs=1e-6)
    beta_a, beta_v = regulation_strengths(torch.tensor(1.0), torch.tensor(3.0), True, 0.95, 0.10)
    assert (float(beta_a), float(beta_v)) == pytest.approx((0.0, 0.262224), abs=1e-6)
    # outside the window, or with equal scores: none
    assert [float(b) for b in regulation_strengths(torch.tensor(1.5), torch.tensor(1.0), False, 0.95, 0.1)] == [0, 0]
    assert [float(b) for b in regulation_strengths(torch.tensor(1.0), torch.tensor(1.0), True, 0.95, 0.1)] == [0, 0]


def test_window_gate_of_lines_236_243_by_hand():
    """History [0 x 10, 2, 3] at epoch 2: tr1 = (2 + 3) / 10 = 0.5, tr2 = 2 / 10 = 0.2, k = 0.6."""
    assert window_gate([0.0] * 10 + [2.0, 3.0], 10) == pytest.approx(0.6)
    assert window_gate([0.0] * 10 + [2.0], 10) == pytest.approx(1.0)  # epoch 1: nothing before
    assert window_gate([0.0] * 12, 10) == 0.0  # no gradient at all (the release would divide by zero)


def test_the_dominant_encoder_is_pulled_to_its_epoch_start_weights_and_the_fisher_sums_squared_gradients():
    dataset, splits, ctx, model, _ = training_setup(tiny_config("inforeg"))
    batch = dataset.transform(next(splits.train.batches(16)), train=False, generator=ctx.generator("augment"))
    method = ctx.method
    method.on_epoch_start(model, ctx)
    with torch.no_grad():  # move the weights away from the epoch-start copy
        for param in model.parameters():
            param.add_(0.01)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(batch.audio, batch.visual)
    loss = sum(F.cross_entropy(z, batch.y) for z in (out.logits, out.logits_a, out.logits_v))
    grads = dict(zip(dict(model.named_parameters()), torch.autograd.grad(loss, list(model.parameters())), strict=True))
    s_a, s_v = (float(F.softmax(z.detach(), 1).gather(1, batch.y[:, None]).sum())
                for z in (out.logits_a, out.logits_v))
    model.load_state_dict(state)
    beta_a = 0.95 * math.exp(math.tanh(s_a - s_v)) if s_a > s_v else 0.0
    beta_v = 0.10 * math.exp(math.tanh(s_v - s_a)) if s_v > s_a else 0.0

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    method.train_step(model, batch, optimizer, ctx)
    for name, param in model.named_parameters():
        beta = beta_a if name.startswith("audio_encoder.") else beta_v if name.startswith("visual_encoder.") else 0
        expected = grads[name] + beta * 0.01 * (name.startswith(("audio_encoder.", "visual_encoder.")))
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6)
    convs = [m for m in model.audio_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    for fisher, conv in zip(method.fisher, convs, strict=True):
        torch.testing.assert_close(fisher, conv.weight.grad ** 2)
    method.on_epoch_end(model, ctx)
    assert method.traces[-1] == pytest.approx(sum(float((c.weight.grad ** 2).mean()) for c in convs), rel=1e-5)


def test_the_gate_closes_once_the_audio_trace_stops_growing():
    _, _, ctx, model, _ = training_setup(tiny_config("inforeg"))
    method = ctx.method
    method.traces = [0.0] * 10 + [1.0] * 11  # flat for the last 11 epochs: k = 0
    ctx.epoch = 11
    method.on_epoch_start(model, ctx)
    assert not method.in_window


def test_official_profile_follows_the_defaults_of_main_py():
    cfg = resolve("inforeg", "cremad", 0, "official")
    assert (cfg.lr, cfg.lr_step, cfg.epochs, cfg.batch_size, cfg.data["frames"]) == (2e-3, 30, 50, 64, 3)


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("inforeg", tmp_path)

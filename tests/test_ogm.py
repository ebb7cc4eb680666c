"""OGM-GE and OGM (journal): coefficients, which gradients are scaled, and the GE noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mmbench.config import resolve
from mmbench.data import Batch
from mmbench.method import RunContext
from mmbench.methods.ogm import modulate_gradients, modulated_parameters, modulation_coefficients
from mmbench.registry import METHODS
from mmbench.results import read_epochs
from mmbench.train import engine
from mmbench.train.models import Outputs, build_av_model

from .conftest import tiny_config, train_steps


@pytest.mark.parametrize("s_a, s_v, alpha, expected", [
    (3.0, 1.0, 0.5, (1 - math.tanh(1.5), 1.0)),   # audio dominates: rho_a = 3
    (1.0, 2.0, 0.8, (1.0, 1 - math.tanh(1.6))),   # visual dominates: rho_v = 2
    (2.0, 2.0, 0.8, (1 - math.tanh(0.8), 1.0)),   # rho = 1: the official code slows audio
    (1.5, 0.0, 0.8, (0.0, 1.0)),                  # visual scores zero: rho_a = inf, k_a = 0
    (0.0, 1.5, 0.8, (1.0, 0.0)),
    (0.0, 0.0, 0.8, (1.0, 1.0)),                  # nothing known, nothing slowed
])
def test_modulation_coefficients_by_hand(s_a, s_v, alpha, expected):
    assert modulation_coefficients(s_a, s_v, alpha) == pytest.approx(expected)


def test_exact_tie_follows_each_codes_else_branch():
    """CVPR main.py ~119-124: `if ratio_v > 1: slow v else: slow a` -> a tie slows audio.
    BML_TPAMI2024 code/main.py ~138-148: `if radio_1 > 1: slow audio else: slow visual` -> a tie
    slows visual, k = 1 - tanh(alpha * relu(radio_2)) with radio_2 = 1."""
    k = 1 - math.tanh(0.8)
    assert modulation_coefficients(2.0, 2.0, 0.8, tie_slows="audio") == pytest.approx((k, 1.0))
    assert modulation_coefficients(2.0, 2.0, 0.8, tie_slows="visual") == pytest.approx((1.0, k))
    assert METHODS.get("ogm-ge").tie_slows == "audio" and METHODS.get("ogm").tie_slows == "visual"
    # away from a tie the two rules agree
    assert modulation_coefficients(2.0, 1.0, 0.8, "visual") == modulation_coefficients(2.0, 1.0, 0.8, "audio")


def test_journal_official_profile_runs_with_ge_noise():
    """BML_TPAMI2024 code/main.py ~36: `--modulation` defaults to OGM_GE and train_ogm.sh keeps it."""
    for dataset in ("cremad", "kinetics-sounds"):
        assert resolve("ogm", dataset, profile="official").hparams["ge"] is True
        assert resolve("ogm", dataset).hparams["ge"] is False


def _python_float_coefficients(s_a: float, s_v: float, alpha: float) -> tuple[float, float]:
    """The rule as the official code evaluates it, in Python floats (CVPR main.py ~115-124)."""
    if s_a == 0 and s_v == 0:
        return 1.0, 1.0
    if s_v > s_a:
        return 1.0, 1.0 - math.tanh(alpha * (s_v / s_a if s_a else math.inf))
    return 1.0 - math.tanh(alpha * (s_a / s_v if s_v else math.inf)), 1.0


def test_device_coefficients_equal_the_python_float_rule_bit_for_bit():
    """Issue 16.5: k is computed on the device (no read of the scores per step) in float64. torch's tanh
    may differ from libm's in the last bit of a double, but a gradient is multiplied by k rounded to
    float32, and there the two agree exactly: the move changed no number of a run."""
    scores = np.random.default_rng(0).uniform(0, 32, (300, 2)).astype(np.float32).tolist()
    for s_a, s_v in [*scores, (2.0, 2.0), (0.0, 1.5), (1.5, 0.0), (0.0, 0.0), (1e-30, 3.0)]:
        k_a, k_v = modulation_coefficients(torch.tensor(s_a), torch.tensor(s_v), 0.8)
        expected = torch.tensor(_python_float_coefficients(s_a, s_v, 0.8), dtype=torch.float64)
        assert k_a.dtype == torch.float64
        assert torch.equal(torch.stack([k_a, k_v]).float(), expected.float()), (s_a, s_v)
        torch.testing.assert_close(torch.stack([k_a, k_v]), expected, rtol=0, atol=4.5e-16)  # a few ulps of 1


def test_ge_noise_is_scaled_then_added_like_normal():
    """`zeros_like(g).normal_(0, std + 1e-8)` is std * N(0, 1), rounded, then added to k g (main.py ~130-140)."""
    g = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    param = nn.Parameter(torch.zeros_like(g))
    param.grad = g.clone()
    modulate_gradients([param], torch.tensor(0.25, dtype=torch.float64), torch.Generator().manual_seed(4))
    noise = torch.randn(g.shape, generator=torch.Generator().manual_seed(4))
    std = torch.tensor(g.std().item() + 1e-8, dtype=torch.float32)
    assert torch.equal(param.grad, g * 0.25 + noise * std)


def test_coefficient_literal_value():
    k_a, _ = modulation_coefficients(3.0, 1.0, 0.5)
    assert k_a == pytest.approx(0.0948517, abs=1e-6)  # 1 - tanh(1.5)


class ConvAndLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 2)


def test_modulated_parameters_conv_vs_all():
    module = ConvAndLinear()
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    assert modulated_parameters(module, "conv") == [module.conv.weight]
    assert modulated_parameters(module, "all") == [module.conv.weight, module.fc.weight]


def _setup(method_name, epoch=0, **overrides):
    cfg = tiny_config(method_name, **overrides)
    device = torch.device("cpu")
    ctx = RunContext(cfg, 6, device, engine.make_generators(cfg.seed, device), epoch=epoch)
    method = METHODS.get(method_name)(ctx)
    torch.manual_seed(0)
    model = build_av_model(cfg, 6)
    batch = Batch(torch.randn(8, 1, 12, 12), torch.randn(8, 1, 3, 12, 12), torch.arange(8) % 6, torch.arange(8))
    model(batch.audio, batch.visual).logits.logsumexp(1).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return method, model, batch, ctx, grads


def _audio_dominant_outputs(batch):
    """Per-modality logits built so that s_a = 8 * 0.9 and s_v = 8 / 6 (uniform)."""
    y = batch.y
    p_true = 0.9
    logit = math.log(p_true * 5 / (1 - p_true))  # softmax gives p_true on y, the rest shared
    logits_a = torch.zeros(8, 6)
    logits_a[torch.arange(8), y] = logit
    return Outputs(logits_a, logits_a, torch.zeros(8, 6)), 8 * p_true, 8 / 6


def test_after_backward_scales_exactly_the_dominant_encoders_conv_kernels():
    method, model, batch, ctx, grads = _setup("ogm-ge", ge=False, alpha=0.5)
    out, s_a, s_v = _audio_dominant_outputs(batch)
    method.after_backward(model, out, batch, ctx)
    logs = ctx.pop_epoch_logs()
    assert logs["k_a"] == pytest.approx(1 - math.tanh(0.5 * s_a / s_v)) and logs["k_v"] == 1.0
    assert logs["rho"] == pytest.approx(s_a / s_v)
    k_a = logs["k_a"]  # the very float that was applied (the hand value up to float32 scores)
    for name, p in model.named_parameters():
        if name.startswith("audio_encoder") and p.dim() == 4:
            assert torch.equal(p.grad, grads[name] * k_a), name
        else:
            assert torch.equal(p.grad, grads[name]), name  # BN, visual encoder, fusion: untouched


@pytest.mark.parametrize("method_name, epoch, overrides", [
    ("ogm-ge", 5, {"modulation_starts": 6}),
    ("ogm-ge", 7, {"modulation_ends": 6}),
    ("ogm", 0, {"warmup_epochs": 1}),
])
def test_no_modulation_outside_the_window_or_in_warmup(method_name, epoch, overrides):
    method, model, batch, ctx, grads = _setup(method_name, epoch=epoch, **overrides)
    out, _, _ = _audio_dominant_outputs(batch)
    method.after_backward(model, out, batch, ctx)
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert ctx.pop_epoch_logs()["modulated"] == 0.0


def test_ge_noise_has_the_unmodulated_gradients_standard_deviation():
    param = nn.Parameter(torch.zeros(100, 50, 2, 2))
    param.grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.3 + 0.05
    original = param.grad.clone()
    k = 0.25
    modulate_gradients([param], k, torch.Generator().manual_seed(2))
    noise = (param.grad - k * original).flatten().double()
    sigma = original.std().item() + 1e-8
    n = noise.numel()
    # mean: z-test; variance: chi-square test, both at a 0.1 % level with a fixed seed
    assert abs(noise.mean().item()) / (sigma / math.sqrt(n)) < 3.3
    chi2 = (n - 1) * noise.var().item() / sigma**2
    assert 0.001 < stats.chi2.cdf(chi2, n - 1) < 0.999


def test_ge_noise_reaches_both_encoders_and_is_seeded():
    method, model, batch, ctx, grads = _setup("ogm-ge", ge=True, alpha=0.5)
    out, s_a, s_v = _audio_dominant_outputs(batch)
    method.after_backward(model, out, batch, ctx)
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        if p.dim() == 4:
            assert not torch.equal(p.grad, grads[name] * (1 - math.tanh(0.5 * s_a / s_v)
                                                          if name.startswith("audio") else 1.0)), name
        else:
            assert torch.equal(p.grad, grads[name]), name
    method2, model2, batch2, ctx2, _ = _setup("ogm-ge", ge=True, alpha=0.5)
    method2.after_backward(model2, out, batch2, ctx2)
    assert all(torch.equal(p.grad, first[n]) for n, p in model2.named_parameters())


def test_ogm_journal_defaults_and_per_dataset_values():
    ogm = METHODS.get("ogm")
    assert ogm.hparams["ge"] is False and ogm.hparams["warmup_epochs"] == 6
    assert ogm.dataset_hparams["cremad"]["alpha"] == 2.6
    assert METHODS.get("ogm-ge").dataset_hparams["cremad"]["alpha"] == 0.8


def test_epoch_rows_carry_the_coefficients(tmp_path):
    cfg = tiny_config("ogm-ge", epochs=2)
    engine.run(cfg, tmp_path)
    epochs = read_epochs(tmp_path)
    for column in ("diag_rho", "diag_k_a", "diag_k_v", "diag_modulated"):
        assert epochs[column].notna().all(), column
    assert ((epochs["diag_k_a"] <= 1) & (epochs["diag_k_v"] <= 1)).all()
    assert (epochs[["diag_k_a", "diag_k_v"]].min(axis=1) < 1).all()  # someone is always slowed


def _conv_displacement(initial, model, prefix):
    return sum((p.detach() - initial[n]).norm().item() for n, p in model.named_parameters()
               if n.startswith(prefix) and p.dim() == 4)


def test_modulation_slows_the_dominant_encoder_on_imbalanced_data():
    """Effect on the synthetic data (audio dominates): audio kernels move far less than under
    joint training from the same init and batches; visual kernels are not slowed."""
    steps = 40
    init_j, joint, _ = train_steps(tiny_config("joint", n_train=640), steps)
    init_o, ogm, ctx = train_steps(tiny_config("ogm", n_train=640, warmup_epochs=0, alpha=0.8), steps)
    assert all(torch.equal(init_j[k], init_o[k]) for k in init_j)  # paired: the same start
    logs = ctx.pop_epoch_logs()
    assert logs["rho"] > 1 and logs["k_a"] < 0.5  # audio dominated and was slowed
    audio_ratio = _conv_displacement(init_o, ogm, "audio") / _conv_displacement(init_j, joint, "audio")
    visual_ratio = _conv_displacement(init_o, ogm, "visual") / _conv_displacement(init_j, joint, "visual")
    assert audio_ratio < 0.5
    assert visual_ratio > 0.8

"""DGL against the official code (shicaiwei123/ICCV2025-GDL @b72a55f), by hand values and by its two-backward
rule written out: the encoders get only alpha * grad(CE(u_a) + CE(u_v)), the head only grad(CE(z))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import resolve
from mmbench.data import Batch
from mmbench.method import RunContext
from mmbench.registry import METHODS
from mmbench.train import engine
from mmbench.train.models import ConcatFusion

from .conftest import assert_resumes_identical, tiny_config


class ScaledFeatures(nn.Module):
    """f_a = s_a * audio, f_v = s_v * visual: encoders with one parameter each, for hand values."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.s_a, self.s_v = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))
        self.fusion = ConcatFusion(dim, dim, classes)

    def encode(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.s_a * audio, self.s_v * visual


def _method(**hparams):
    cfg = tiny_config("dgl", **hparams)
    ctx = RunContext(cfg, 2, torch.device("cpu"), engine.make_generators(0, torch.device("cpu")))
    return METHODS.get("dgl")(ctx), ctx


def _step(model, batch, **hparams):
    method, ctx = _method(**hparams)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the gradients, moves nothing
    out, loss = method.train_step(model, batch, optimizer, ctx)
    return out, loss


def test_hand_values_with_a_zero_head():
    """METHODS2 §17.4: W = 0, b = 0, two classes, f_a = f_v = 1, y = 1. z = u_a = u_v = 0, p = (0.5, 0.5);
    dCE(z)/dW = (p - y) x [f_a; f_v] = ((0.5, 0.5), (-0.5, -0.5)), dCE(z)/db = (0.5, -0.5); the encoders get
    0 (W = 0 passes nothing back), and the head none of alpha * (CE(u_a) + CE(u_v))."""
    model = ScaledFeatures(1, 2)
    with torch.no_grad():
        model.fusion.fc.weight.zero_()
        model.fusion.fc.bias.zero_()
    batch = Batch(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([1]), torch.arange(1))
    _step(model, batch)
    torch.testing.assert_close(model.fusion.fc.weight.grad, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    torch.testing.assert_close(model.fusion.fc.bias.grad, torch.tensor([0.5, -0.5]))
    assert model.s_a.grad == 0 and model.s_v.grad == 0


def test_encoders_learn_only_from_the_unimodal_losses_and_the_head_only_from_the_fused_one():
    """main_dgl.py:108-122 and fusion_modules.py:51-59, written out with autograd."""
    torch.manual_seed(0)
    model = ScaledFeatures(3, 4)
    batch = Batch(torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6))
    out, loss = _step(model, batch, alpha=2.5, clip=0.0)

    w, b = model.fusion.fc.weight.detach().clone().requires_grad_(), model.fusion.fc.bias.detach().clone()
    s_a, s_v = torch.ones((), requires_grad=True), torch.ones((), requires_grad=True)
    f_a, f_v = s_a * batch.audio, s_v * batch.visual
    unimodal = 2.5 * (F.cross_entropy(f_a @ w[:, :3].T.detach() + b, batch.y)
                      + F.cross_entropy(f_v @ w[:, 3:].T.detach() + b, batch.y))
    unimodal.backward()
    b.requires_grad_()
    fused = F.cross_entropy(torch.cat((f_a, f_v), 1).detach() @ w.T + b, batch.y)
    fused.backward()
    torch.testing.assert_close(model.s_a.grad, s_a.grad)
    torch.testing.assert_close(model.s_v.grad, s_v.grad)
    torch.testing.assert_close(model.fusion.fc.weight.grad, w.grad)
    torch.testing.assert_close(model.fusion.fc.bias.grad, b.grad)
    torch.testing.assert_close(loss, fused.detach())
    # the per-modality logits carry the full bias (fusion_modules.py:57-58)
    torch.testing.assert_close(out.logits_a, (f_a @ w[:, :3].T + b).detach())


def test_the_whole_models_gradient_norm_is_clipped():
    torch.manual_seed(1)
    model = ScaledFeatures(3, 4)
    batch = Batch(torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6))
    _step(model, batch, alpha=1000.0, clip=0.5)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_evaluation_predicts_with_the_fused_head_and_reports_full_bias_unimodal_logits():
    """main_dgl.py:200-204: prediction softmax(out), per-modality softmax(out_a), softmax(out_v)."""
    model = ScaledFeatures(2, 3)
    method, ctx = _method()
    batch = Batch(torch.randn(4, 2), torch.randn(4, 2), torch.arange(4) % 3, torch.arange(4))
    with torch.no_grad():
        out = method.predict(model, batch, ctx)
        fc = model.fusion.fc
        torch.testing.assert_close(out.logits, fc(torch.cat((batch.audio, batch.visual), 1)))
        torch.testing.assert_close(out.logits_a, batch.audio @ fc.weight[:, :2].T + fc.bias)
        torch.testing.assert_close(out.logits_v, batch.visual @ fc.weight[:, 2:].T + fc.bias)


def test_official_profile_follows_the_scripts():
    cfg = resolve("dgl", "cremad", 0, "official")
    assert (cfg.lr, cfg.lr_milestones, cfg.lr_step_at, cfg.epochs, cfg.batch_size, cfg.hparams["alpha"],
            cfg.data["frames"]) == (2e-3, (70,), "epoch_start", 100, 64, 4.0, 1)
    ks = resolve("dgl", "kinetics-sounds", 0, "official")
    assert (ks.hparams["alpha"], ks.data["frames"]) == (2.0, 3)


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("dgl", tmp_path)

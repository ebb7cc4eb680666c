"""PMR against the official code (fanyunfeng-bit/Modal-Imbalance-PMR @3615e48, `main_Prototype_grad.py`), by
hand values of its prototype similarities, its coefficient rule and its prototypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import resolve
from mmbench.method import RunContext
from mmbench.methods.pmr import class_means, prototype_coefficients, prototype_similarity
from mmbench.registry import METHODS
from mmbench.train import engine
from mmbench.train.models import Outputs

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_similarity_is_the_negative_euclidean_distance_of_lines_69_75_and_152_153():
    sim = prototype_similarity(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    torch.testing.assert_close(sim, torch.tensor([[0.0, -5.0]]))
    torch.testing.assert_close(F.softmax(sim, dim=1), torch.tensor([[0.993307, 0.006693]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("audio_ahead, expected", [(True, (0.0, 2.0)), (False, (2.0, 0.0)), (None, (0.0, 0.0))])
def test_the_lagging_modality_gets_alpha_as_lines_158_160_and_169_177(audio_ahead, expected):
    y = torch.tensor([0, 1])
    confident, unsure = torch.tensor([[0.0, -5.0], [-5.0, 0.0]]), torch.zeros(2, 2)
    sim_a, sim_v = {True: (confident, unsure), False: (unsure, confident), None: (unsure, unsure)}[audio_ahead]
    beta, lam, rho = prototype_coefficients(sim_a, sim_v, y, alpha=2.0)
    assert (float(beta), float(lam)) == expected
    # rho = sum of the true-class probabilities: 2 * 0.993307 against 2 * 0.5
    assert float(rho) == pytest.approx({True: 1.986614, False: 1 / 1.986614, None: 1.0}[audio_ahead], abs=1e-6)


def _method(epoch: int = 0, **hparams):
    cfg = tiny_config("pmr", **hparams)
    ctx = RunContext(cfg, 2, torch.device("cpu"), engine.make_generators(0, torch.device("cpu")), epoch=epoch)
    return METHODS.get("pmr")(ctx), ctx


def test_loss_of_line_178_trains_only_the_lagging_modalitys_features():
    method, ctx = _method(alpha=2.0, modulation_ends=3)
    method.prototypes = {"a": torch.tensor([[0.0, 0.0], [3.0, 4.0]]), "v": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    feat_a, feat_v = torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 2, requires_grad=True)
    out = Outputs(torch.zeros(1, 2), feat_a=feat_a, feat_v=feat_v)
    batch = type("B", (), {"y": torch.tensor([0])})()
    # audio: p = 0.993307; visual: both prototypes at distance 1, p = 0.5 -> rho > 1 -> lam = alpha
    loss = method.loss(out, batch, ctx)
    assert float(loss.detach()) == pytest.approx(math.log(2) + 2.0 * math.log(2), abs=1e-6)
    loss.backward()
    assert torch.all(feat_a.grad == 0) and torch.any(feat_v.grad != 0)
    # outside the modulation epochs: the fused cross-entropy alone
    ctx.epoch = 4
    assert float(method.loss(out, batch, ctx)) == pytest.approx(math.log(2), abs=1e-6)


def test_class_means_keep_the_previous_prototype_of_a_class_without_samples():
    feat = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    previous = torch.full((3, 2), 7.0)
    means = class_means(feat, torch.tensor([0, 0, 2]), 3, previous)
    torch.testing.assert_close(means, torch.tensor([[2.0, 1.0], [7.0, 7.0], [5.0, 5.0]]))


def test_prototypes_from_a_tenth_of_the_batches_with_momentum_from_the_third_epoch(monkeypatch):
    """Lines 383-441 and 535-557: `all_num // 10` batches (at least one) of the shuffled, augmented training
    loader in eval mode; before epoch e >= 2 the prototypes are (1 - mu) new + mu previous."""
    _, splits, ctx, model, _ = training_setup(tiny_config("pmr", momentum_coef=0.25))
    method = ctx.method
    seen = []

    def fake_infer(model, split, forward=None, features=False, augment=False):
        assert features and augment
        seen.append(len(split))
        value = float(len(seen))  # every feature of call k is k
        return {"feat_a": torch.full((len(split), 3), value), "feat_v": torch.full((len(split), 4), -value)}

    monkeypatch.setattr(ctx, "infer", fake_infer)
    for epoch, expected in enumerate((1.0, 2.0, 0.75 * 3.0 + 0.25 * 2.0)):
        ctx.epoch = epoch
        method.on_epoch_start(model, ctx)
        present = torch.bincount(ctx.train.y, minlength=ctx.num_classes) > 0
        assert torch.all(method.prototypes["a"][present] == expected), epoch
        assert torch.all(method.prototypes["v"][present] == -expected), epoch
    batches = max(1, ctx.steps_per_epoch // 10)
    assert seen == [min(len(splits.train), batches * ctx.cfg.batch_size)] * 3


def test_prototypes_are_features_of_the_model_in_eval_mode_with_training_augmentation():
    _, splits, ctx, model, _ = training_setup(tiny_config("pmr"))
    model.train()
    ctx.method.on_epoch_start(model, ctx)
    assert model.training  # infer put the model back
    assert ctx.method.prototypes["a"].shape == (ctx.num_classes, model.audio_encoder.out_dim)
    assert torch.isfinite(ctx.method.prototypes["v"]).all()


def test_official_profile_follows_line_217_of_bash_sh():
    cfg = resolve("pmr", "cremad", 0, "official")
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.data["frames"],
            cfg.data["audio_frontend"]) == ("adagrad", 1e-3, 0.0, 130, 64, 3, "psd")
    assert (cfg.hparams["alpha"], cfg.hparams["momentum_coef"], cfg.hparams["modulation_ends"]) == (2.0, 0.0, 70)
    assert resolve("pmr", "kinetics-sounds", 0).hparams["alpha"] == 1.0  # no script: the code's defaults


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("pmr", tmp_path)

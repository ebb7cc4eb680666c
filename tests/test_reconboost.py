"""ReconBoost (Hua et al., ICML 2024) against the official code, huacong/ReconBoost @14ab57a: hand values of the
boosting loss (`train.py` lines 337-340: -w1 mean_c(t log p) + w2 mean_c(t softmax(F_-m) log p), with the constant
c0 through a one-column softmax before another learner joined, lines 331-332), the gradient-free reconcilement
term (line 349: both softmaxes detached), the stage schedule (`schedule.py` lines 50-55), the fresh optimiser per
phase (lines 296, 371), which parameters each phase trains (`models/dynamic_net.py` lines 59-73, 96-135), then
the effect."""

from __future__ import annotations

import math

import pytest
import torch

from mmbench.methods.reconboost import boosting_loss
from mmbench.results import read_epochs

from .conftest import assert_resumes_identical, tiny_config, training_setup


def _logits_with_label_probability(p: float, classes: int = 6) -> torch.Tensor:
    """One row whose softmax gives class 0 probability p and the other classes equal shares."""
    rest = (1 - p) / (classes - 1)
    return torch.log(torch.tensor([[p] + [rest] * (classes - 1)]))


def test_boosting_loss_by_hand():
    y = torch.tensor([0])
    # METHODS2 §2.5: C = 6, w1 = 5, w2 = 1, p_F(y) = 0.5, p_g(y) = 0.4: -(5 - 0.5) / 6 * ln 0.4 = 0.687218
    loss = boosting_loss(_logits_with_label_probability(0.4), _logits_with_label_probability(0.5), y, 5.0, 1.0)
    assert loss.item() == pytest.approx(0.687218, abs=1e-6)
    # no other learner yet: the release's c0 through a softmax over one column is 1: -(5 - 1) / 6 * ln 0.4
    assert boosting_loss(_logits_with_label_probability(0.4), None, y, 5.0, 1.0).item() == pytest.approx(
        -4 / 6 * math.log(0.4), abs=1e-6)


def test_the_schedule_alternates_audio_and_visual_stages_of_boosting_then_rectification():
    _, _, ctx, _, _ = training_setup(tiny_config("reconboost", boost_epochs=2, rectify_epochs=1))
    got = [ctx.method.schedule(e) for e in range(7)]
    assert got == [(0, True, "audio"), (0, True, "audio"), (0, False, "audio"), (1, True, "visual"),
                   (1, True, "visual"), (1, False, "visual"), (2, True, "audio")]


def _setup(**overrides):
    cfg = tiny_config("reconboost", boost_epochs=1, rectify_epochs=1, **overrides)
    dataset, splits, ctx, model, optimizer = training_setup(cfg)
    batches = splits.train.batches(cfg.batch_size, ctx.generator("order"))
    next_batch = lambda: dataset.transform(next(batches), True, ctx.generator("augment"))  # noqa: E731
    return next_batch, ctx, model, optimizer


def _trained(model):
    return {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}


def test_each_phase_trains_its_parameters_and_starts_with_a_fresh_optimiser_state():
    next_batch, ctx, model, optimizer = _setup(batch_size=16)
    method = ctx.method
    for epoch, trained, joined in [(0, {"audio_encoder", "head"}, ("audio",)),  # stage 0: audio boosts
                                   (1, {"audio_encoder", "head", "beta"}, ("audio",)),  # rectify: visual not in
                                   (2, {"visual_encoder", "head"}, ("audio", "visual")),  # stage 1: visual boosts
                                   (3, {"audio_encoder", "visual_encoder", "head", "beta"}, ("audio", "visual"))]:
        ctx.epoch = epoch
        method.on_epoch_start(model, ctx)
        assert not optimizer.state, epoch  # each phase starts afresh (here every epoch starts a phase)
        method.train_step(model, next_batch(), optimizer, ctx)
        assert _trained(model) == trained, epoch
        assert model.joined == joined, epoch
        method.train_step(model, next_batch(), optimizer, ctx)
        assert optimizer.state  # momentum kept within the phase


def test_the_ensemble_predicts_beta_times_the_joined_learners_logits():
    next_batch, ctx, model, _ = _setup(beta_init=0.5)
    batch = next_batch()
    model.eval()
    g_a, g_v = (model.head(enc(x)) for enc, x in ((model.audio_encoder, batch.audio),
                                                   (model.visual_encoder, batch.visual)))
    assert torch.equal(model(batch.audio, batch.visual).logits, torch.zeros_like(g_a))  # none joined yet
    model.joined = ("audio",)
    torch.testing.assert_close(model(batch.audio, batch.visual).logits, 0.5 * g_a)
    model.joined = ("audio", "visual")
    out = model(batch.audio, batch.visual)
    torch.testing.assert_close(out.logits, 0.5 * (g_a + g_v))
    torch.testing.assert_close(out.logits_v, g_v)


@pytest.mark.parametrize("reconcile, changes_gradient", [("released", False), ("intended", True)])
def test_the_released_reconcilement_term_has_no_gradient(reconcile, changes_gradient):
    grads = {}
    for mode in ("off", reconcile):
        next_batch, ctx, model, optimizer = _setup(reconcile=mode)
        ctx.method.joined = model.joined = ("audio", "visual")
        ctx.epoch = 2  # stage 1: visual boosts, the term is on
        batch = next_batch()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            bn = {k: v.clone() for k, v in model.audio_encoder.state_dict().items()}
        _, loss = ctx.method.boost(model, batch, "visual", 1, ctx)
        loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        moved = any(not torch.equal(v, model.audio_encoder.state_dict()[k]) for k, v in bn.items())
        assert moved == any("running" in k for k in bn)  # the other learner ran in train mode
    same = all(torch.equal(grads["off"][n], grads[reconcile][n]) for n in grads["off"])
    assert same != changes_gradient


def test_init_from_the_unimodal_runs_loads_both_encoders_and_joins_both_learners():
    _, _, ctx, model, _ = training_setup(tiny_config("reconboost", init="unimodal"))
    for key, encoder in (("teacher_a", model.audio_encoder), ("teacher_v", model.visual_encoder)):
        for name, value in ctx.load_run(key).encoder.state_dict().items():
            torch.testing.assert_close(encoder.state_dict()[name], value, msg=name)
    assert model.joined == ("audio", "visual") and ctx.method.joined == ("audio", "visual")
    assert all(p.requires_grad for p in model.parameters())  # copied into the run's own trainable encoders


def test_reconboost_resumes_after_a_kill_identical(tmp_path):
    assert_resumes_identical("reconboost", tmp_path, epochs=3, stop_after=1, boost_epochs=1, rectify_epochs=1)


@pytest.mark.parametrize("seed", [0])
def test_reconboost_trains_the_visual_learner_in_its_stages_on_the_imbalanced_dataset(synthetic_run, seed):
    """One boosting and one rectification epoch per stage (BalanceBenchmark's pace) over the 12-epoch protocol:
    six stages, three of them boosting the visual learner, whose head rises from chance."""
    run = synthetic_run("reconboost", seed, boost_epochs=1, rectify_epochs=1)
    epochs = read_epochs(synthetic_run.out).set_index("run_id").loc[[run["run_id"]]]
    assert epochs["diag_reconboost_stage"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert epochs["val_acc_head_v"].iloc[-1] > epochs["val_acc_head_v"].iloc[:2].max() + 0.05

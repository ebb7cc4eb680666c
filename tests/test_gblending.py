"""G-Blending (Wang et al., CVPR 2020) against BalanceBenchmark's implementation (the authors released no code):
the weight |G / O^2| and its normalisation (`balancemm/trainer/GBlending_trainer.py` lines 361-373), the weighted
loss (lines 292-303), the copies (lines 306-360: the model copied, a fresh optimiser, the other modality's input
zeroed, training and held-out losses after the first and last epoch) on a held-out part of the training split,
then the effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.methods.gblending import blending_weight, zero_other_modality
from mmbench.results import read_epochs

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_blending_weight_by_hand():
    # METHODS2 §8.4: L^T_first 10, L^V_first 12, L^T_last 4, L^V_last 9: G = -3, O = (9 - 4) - (12 - 10) = 3
    assert blending_weight(10, 12, 4, 9) == pytest.approx(1 / 3)
    assert blending_weight(10, 12, 4, 15) == pytest.approx(3 / 81)  # G = 3, O = 11 - 2 = 9


def test_the_estimate_normalises_the_three_heads_weights_every_super_epoch(monkeypatch):
    _, _, ctx, model, _ = training_setup(tiny_config("gblending", super_epoch=3))
    method = ctx.method
    losses = {"audio": (10, 12, 4, 9), "visual": (10, 12, 4, 9), "output": (10, 12, 4, 9 + 3 / 2)}
    calls = []
    monkeypatch.setattr(method, "copy_losses", lambda m, head, c: calls.append(head) or losses[head])
    # output: G = 10.5 - 12 = -1.5, O = (10.5 - 4) - (12 - 10) = 4.5: w = 1.5 / 20.25 = 2/27 against 1/3 each for
    # audio and visual; normalised (9/27, 9/27, 2/27) / (20/27) = (0.45, 0.45, 0.1)
    method.on_epoch_start(model, ctx)
    assert [method.weights[h] for h in ("audio", "visual", "output")] == pytest.approx([0.45, 0.45, 0.1])
    for epoch in (1, 2):
        ctx.epoch = epoch
        method.on_epoch_start(model, ctx)
    ctx.epoch = 3
    method.on_epoch_start(model, ctx)
    assert calls == ["audio", "visual", "output"] * 2  # epochs 0 and 3


def test_the_loss_weights_each_heads_cross_entropy():
    dataset, splits, ctx, model, _ = training_setup(tiny_config("gblending"))
    batch = dataset.transform(next(splits.train.batches(16)), False, None)
    ctx.method.weights = {"audio": 0.25, "visual": 0.25, "output": 0.5}
    out = model(batch.audio, batch.visual)
    want = (0.25 * F.cross_entropy(out.logits_a, batch.y) + 0.25 * F.cross_entropy(out.logits_v, batch.y)
            + 0.5 * F.cross_entropy(out.logits, batch.y))
    torch.testing.assert_close(ctx.method.loss(out, batch, ctx), want)


def test_zeroing_the_other_modality():
    batch_args = (torch.ones(2, 1, 3, 3), torch.ones(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), torch.arange(2))
    from mmbench.data import Batch

    batch = Batch(*batch_args)
    assert zero_other_modality(batch, "audio").visual.abs().sum() == 0
    assert zero_other_modality(batch, "audio").audio.sum() == 18
    assert zero_other_modality(batch, "visual").audio.abs().sum() == 0
    assert zero_other_modality(batch, "output") is batch


def test_the_copies_train_and_score_on_disjoint_parts_of_the_training_split_and_leave_the_model_as_it_was():
    _, splits, ctx, model, _ = training_setup(tiny_config("gblending", super_epoch=2, holdout=0.25))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    batches = ctx.batches

    def spy(split, batch_size=None, augment=False, generator=None):
        seen.append((set(split.sample_id), augment))
        return batches(split, batch_size, augment, generator)

    ctx.batches = spy
    losses = ctx.method.copy_losses(model, "visual", ctx)
    assert all(math.isfinite(x) and x > 0 for x in losses)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    fit = set().union(*(ids for ids, augment in seen if augment))
    held = set().union(*(ids for ids, augment in seen if not augment))
    train = set(splits.train.sample_id)
    assert fit | held == train and not fit & held
    assert len(held) == round(0.25 * len(train))
    assert not held & (set(splits.val.sample_id) | set(splits.test.sample_id))
    fit_rows, held_rows = ctx.method.held_out_rows(ctx)
    assert torch.equal(ctx.method.held_out_rows(ctx)[1], held_rows)  # the same every estimate


def test_summed_losses_are_the_means_times_the_batch_counts():
    results = {}
    for losses in ("mean", "sum"):
        _, splits, ctx, model, _ = training_setup(tiny_config("gblending", super_epoch=2, losses=losses,
                                                              eval_batch_size=16))
        results[losses] = ctx.method.copy_losses(model, "output", ctx)
        fit, held = (len(r) for r in ctx.method.held_out_rows(ctx))
    train_batches, held_batches = math.ceil(fit / 32), math.ceil(held / 16)
    counts = (train_batches, held_batches, train_batches, held_batches)
    assert results["sum"] == pytest.approx([m * c for m, c in zip(results["mean"], counts, strict=True)], rel=1e-5)


def test_bad_settings_fail_in_one_line():
    from mmbench.config import ConfigError

    with pytest.raises(ConfigError, match="super_epoch=1"):
        tiny_config("gblending", super_epoch=1)
    with pytest.raises(ConfigError, match="holdout=1.0"):
        tiny_config("gblending", holdout=1.0)


def test_gblending_resumes_after_a_kill_identical(tmp_path):
    assert_resumes_identical("gblending", tmp_path, epochs=3, stop_after=1, super_epoch=2)


@pytest.mark.parametrize("seed", [0])
def test_gblending_weights_the_heads_and_lifts_the_slow_modality(synthetic_run, seed):
    """On `synthetic` the copies trained on visual alone overfit least relative to what they generalise, so the
    visual head gets a large weight and leaves chance (benchmarks/imbalance_effect.py, 5 seeds: +34.8 pp visual,
    +11.5 pp fused against joint)."""
    run = synthetic_run("gblending", seed, super_epoch=4, epochs=8)
    joint = synthetic_run("joint", seed)
    epochs = read_epochs(synthetic_run.out).set_index("run_id").loc[[run["run_id"]]]
    weights = epochs[["diag_gblending_w_audio", "diag_gblending_w_visual", "diag_gblending_w_output"]]
    assert weights.sum(axis=1).round(6).eq(1).all()
    assert run["final_acc_head_v"] > joint["final_acc_head_v"]

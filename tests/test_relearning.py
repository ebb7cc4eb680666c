"""Diagnosing & Re-learning against the official code (GeWu-Lab/Diagnosing_Relearning_ECCV2024 @025085e,
`code/ours.py`), by hand values of its purity, its weights and its soft re-initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmbench.config import resolve
from mmbench.methods import relearning
from mmbench.methods.relearning import cluster_purity, purity, reinit_weight, soft_reinit

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_purity_is_the_majority_vote_accuracy_of_lines_63_97():
    # clusters {0, 1, 2} -> class 0 (2 of 3), {3} -> class 1: (2 + 1) / 4
    assert purity(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == 0.75
    assert purity(np.array([2, 2, 5, 5]), np.array([1, 1, 0, 0])) == 1.0  # labels need not be 0..C-1


def test_weight_and_soft_reinit_of_lines_122_127_and_160():
    weight = reinit_weight(0.9, 0.8, move_lambda=3.0)  # tanh(3 * 0.1)
    assert weight == pytest.approx(0.291313, abs=1e-6)
    assert reinit_weight(0.8, 0.9, move_lambda=3.0) == weight  # the gap is absolute
    param = torch.nn.Parameter(torch.ones(2))
    soft_reinit({"w": param}, {"w": torch.zeros(2)}, weight)
    torch.testing.assert_close(param.detach(), torch.full((2,), 0.708687), atol=1e-6, rtol=0)


def test_k_means_purity_on_scaled_features_finds_the_blobs():
    """Lines 105-116: min-max scaling to [-1, 1], then k-means with C clusters."""
    generator = np.random.default_rng(0)
    blob = np.repeat([0, 1], 20)
    features = np.stack([blob * 1e3 + generator.normal(0, 1, 40), generator.normal(0, 1e-3, 40)], axis=1)
    # the second dimension is tiny: only the scaling lets it count, but it is noise, so the blobs win
    assert cluster_purity(features, blob, num_classes=2, n_init=10) == 1.0
    assert cluster_purity(features, np.tile([0, 1], 20), num_classes=2, n_init=10) == 0.5
    # a dimension of tiny scale that separates the classes is found once scaled to [-1, 1]
    tiny_signal = np.stack([generator.normal(0, 1e3, 40) * 0 + 5.0, blob * 1e-6], axis=1)
    assert cluster_purity(tiny_signal, blob, num_classes=2, n_init=10) == 1.0


def test_reinit_follows_epochs_20_40_60_of_lines_418_420():
    _, _, ctx, _, _ = training_setup(tiny_config("relearning"))
    due = [epoch for epoch in range(90) if ctx.method.due(epoch)]
    assert due == [20, 40, 60]


def test_each_encoder_is_pulled_back_by_its_purity_gap(monkeypatch):
    """After a due epoch, encoder m's parameters become w_m theta_init + (1 - w_m) theta with w_m from the
    purities of its train and val features; the fusion head and BatchNorm statistics stay."""
    _, _, ctx, model, _ = training_setup(tiny_config("relearning", reinit_epoch=1, move_lambda=3.0))
    method = ctx.method
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # purities encoded in the features: audio train 0.9 / val 0.4, visual 0.6 / 0.6
    encoded = {("train", "a"): 0.9, ("val", "a"): 0.4, ("train", "v"): 0.6, ("val", "v"): 0.6}

    def fake_infer(model, split, forward=None, features=False, augment=False):
        assert features and not augment  # evaluation transform, as the release's test-time loader
        which = "train" if split is ctx.train else "val"
        return {f"feat_{m}": torch.full((len(split), 3), encoded[which, m]) for m in "av"}

    monkeypatch.setattr(ctx, "infer", fake_infer)
    monkeypatch.setattr(relearning, "cluster_purity", lambda features, y, num_classes, n_init: float(features[0, 0]))
    ctx.epoch = 1  # the epoch after epoch 0: not due
    method.on_epoch_start(model, ctx)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert ctx.pop_epoch_logs()["reinit_weight_audio"] == 0.0
    ctx.epoch = 2
    method.on_epoch_start(model, ctx)
    w_a = math.tanh(3.0 * 0.5)
    after = model.state_dict()
    for name, initial in method.initial["a"].items():
        key = f"audio_encoder.{name}"
        torch.testing.assert_close(after[key], w_a * initial + (1 - w_a) * before[key])
        assert not torch.equal(after[key], before[key])
    for key, value in after.items():
        if not key.startswith("audio_encoder.") or key.removeprefix("audio_encoder.") not in method.initial["a"]:
            assert torch.equal(value, before[key]), key  # visual (gap 0), fusion head, BatchNorm statistics
    logs = ctx.pop_epoch_logs()
    assert logs["reinit_weight_audio"] == pytest.approx(w_a) and logs["reinit_weight_visual"] == 0.0
    assert (logs["purity_train_audio"], logs["purity_val_visual"]) == pytest.approx((0.9, 0.6))


def test_initial_parameters_are_the_runs_own_from_its_seed():
    _, _, ctx, model, _ = training_setup(tiny_config("relearning"))
    initial = ctx.method.initial
    assert initial["v"].keys() == dict(model.visual_encoder.named_parameters()).keys()
    for name, p in model.audio_encoder.named_parameters():
        assert torch.equal(initial["a"][name], p.detach())
    _, _, again, _, _ = training_setup(tiny_config("relearning"))  # a resume builds the same
    assert all(torch.equal(again.method.initial["a"][k], v) for k, v in initial["a"].items())


def test_official_profile_follows_script_ours_sh():
    cfg = resolve("relearning", "cremad", 0, "official")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.batch_size) == \
        ("sgd", 2e-3, 0.9, 1e-4, 90, 64)
    assert cfg.lr_step >= cfg.epochs  # no schedule
    assert (cfg.data["frames"], cfg.data["audio_frontend"], cfg.data["class_order"], cfg.linear_init) == \
        (2, "fbank", "sorted", "pytorch")
    assert (cfg.hparams["move_lambda"], cfg.hparams["reinit_epoch"], cfg.hparams["reinit_num"]) == (3.0, 20, 3)


def test_a_run_resumed_just_before_a_reinit_ends_identical(tmp_path):
    assert_resumes_identical("relearning", tmp_path, epochs=3, stop_after=1, reinit_epoch=1, reinit_num=2)

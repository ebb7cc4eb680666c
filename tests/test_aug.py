"""AUG: residual target, boosting loss, assignment rule, growing heads, resume, effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmbench.config import resolve
from mmbench.methods.aug import assign_head, boosting_loss, is_check_epoch, residual_target
from mmbench.results import read_epochs, read_preds, run_paths
from mmbench.train import engine

from .conftest import stop_after_epoch, tiny_config, train_steps


def test_residual_target_lowers_only_the_true_class():
    y = torch.tensor([0, 2])
    logits_prev = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])  # softmax: [.6 .2 .2], [1/3]*3
    target = residual_target(y, logits_prev, 0.5)
    torch.testing.assert_close(target, torch.tensor([[1 - 0.5 * 0.6, 0, 0], [0, 0, 1 - 0.5 / 3]]))


def test_boosting_loss_by_hand():
    y = torch.tensor([1])
    h1 = torch.tensor([[0.0, 1.0, 0.0]])
    h2 = torch.tensor([[0.5, 0.0, 0.0]])
    def ce(z):
        return -math.log(math.exp(z[1]) / sum(math.exp(v) for v in z))
    p_prev = math.exp(1) / (math.exp(1) + 2)
    log_p_new = 0.0 - math.log(math.exp(0.5) + 2)  # log softmax of h2 at class 1
    expected = ce([0.5, 1.0, 0.0]) + ce([0.0, 1.0, 0.0]) - (1 - 0.5 * p_prev) * log_p_new
    assert boosting_loss([h1, h2], y, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert boosting_loss([h1], y, 0.5).item() == pytest.approx(F.cross_entropy(h1, y).item())


@pytest.mark.parametrize("ratio, expected", [(1.2, "v"), (0.8, "a"), (1.005, None), (0.995, None),
                                             (1.0101, "v"), (0.9899, "a")])
def test_assignment_rule_with_dead_zone(ratio, expected):
    assert assign_head(ratio, sigma=1.0, dead_zone=0.01) == expected


def test_official_profile_uses_the_official_audio_input_and_schedule_timing():
    """NeurIPS25-AUG dataset/CREMA.py ~62-67 tiles the waveform 20x and cuts 20 s; the historical
    dataset/KS.py (966dbf5) loads at 35.4 kHz and keeps 10 s; train_CREMAD.py ~210-212 steps the
    scheduler at the start of each epoch."""
    cremad = resolve("aug", "cremad", profile="official")
    ks = resolve("aug", "kinetics-sounds", profile="official")
    assert cremad.data["audio_frontend"] == "aug-stft" and ks.data["audio_frontend"] == "aug-ks-stft"
    assert cremad.lr_step_at == ks.lr_step_at == "epoch_start"
    benchmark = resolve("aug", "cremad")
    assert benchmark.data["audio_frontend"] == "auto" and benchmark.lr_step_at == "epoch_end"


def test_shared_output_layer_gets_the_lineage_init():
    """AUG utils/utils.py ~81-89: xavier-normal weights and zero bias on every Linear (fc_out too)."""
    _, model, _ = train_steps(tiny_config("aug"), 0)
    assert torch.count_nonzero(model.fc_out.bias) == 0
    fan_out, fan_in = model.fc_out.weight.shape
    assert model.fc_out.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.25)


def test_check_schedule_matches_the_official_code():
    assert [e for e in range(200) if is_check_epoch(e, 200, 0)] == [0] + list(range(19, 200, 20))
    assert all(is_check_epoch(e, 10, 0) for e in range(10))
    assert [e for e in range(9) if is_check_epoch(e, 9, 3)] == [0, 2, 5, 8]


@pytest.mark.parametrize("train_new_heads", [True, False])
def test_a_new_head_is_trained_only_when_asked(train_new_heads):
    cfg = tiny_config("aug", train_new_heads=train_new_heads)
    _, model, ctx = train_steps(cfg, 1)
    method = ctx.method
    method.ratio, ctx.epoch = 2.0, 1  # audio far more confident after epoch 0 (a check epoch)
    method.on_epoch_start(model, ctx)
    assert [len(model.heads[m]) for m in "av"] == [1, 2]
    new_head = {k: v.clone() for k, v in model.heads["v"][1].state_dict().items()}
    encoder = {k: v.clone() for k, v in model.visual_encoder.state_dict().items()}
    batch = next(iter(ctx.train.batches(cfg.batch_size)))
    method.train_step(model, batch, ctx.optimizer, ctx)
    moved = any(not torch.equal(new_head[k], v) for k, v in model.heads["v"][1].state_dict().items())
    assert moved == train_new_heads
    assert any(not torch.equal(encoder[k], v) for k, v in model.visual_encoder.state_dict().items())


def test_inference_is_the_late_fusion_of_summed_heads():
    cfg = tiny_config("aug")
    _, model, ctx = train_steps(cfg, 1)
    model.add_head("v", torch.Generator().manual_seed(0))
    batch = next(iter(ctx.train.batches(8)))
    model.eval()
    out = model(batch.audio, batch.visual)
    z_v = sum(model.head_logits("v", batch.visual))
    z_a = sum(model.head_logits("a", batch.audio))
    torch.testing.assert_close(out.logits, 0.4 * z_a + 0.6 * z_v)


def test_resume_restores_grown_heads_and_optimizer_and_ends_the_same(tmp_path):
    cfg = tiny_config("aug", epochs=5)
    reference = engine.run(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        engine.run(cfg, tmp_path / "cut", stop_after_epoch(2))
    state = torch.load(run_paths(tmp_path / "cut", cfg).checkpoint_dir / "last.pt", weights_only=False)
    heads = state["method"]["heads"]
    assert sum(heads.values()) > 2, "heads must have grown before the interruption"
    assert len(state["optimizer"]["param_groups"]) == 1 + len(state["method"]["added_groups"])
    resumed = engine.run(cfg, tmp_path / "cut")
    assert resumed["final_n_correct"] == reference["final_n_correct"]
    ref = read_preds(run_paths(tmp_path / "ref", cfg))
    cut = read_preds(run_paths(tmp_path / "cut", cfg))
    assert np.array_equal(np.stack(ref["probs"]), np.stack(cut["probs"]))
    epochs = read_epochs(tmp_path / "cut")
    assert epochs["diag_heads_a"].iloc[-1] + epochs["diag_heads_v"].iloc[-1] >= sum(heads.values())


def test_the_idle_branch_takes_exactly_one_sgd_step_per_batch():
    """AUG train_CREMAD.py ~47-89: audio step, zero_grad, visual step. On PyTorch >= 2 zero_grad sets
    the gradients to None, so the visual step leaves the audio encoder alone: after one batch each
    audio weight is p - lr (g + wd p) (SGD's first step, momentum buffer = g + wd p). Under the
    PyTorch 1.11 semantics the code was written for, the visual step would move it a second time
    by lr (0.9 (g + wd p) + wd p'), which mmbench does not reproduce (documented departure)."""
    import copy

    lr, wd = 0.05, 0.01
    cfg = tiny_config("aug", lr=lr, weight_decay=wd, momentum=0.9)
    _, model, ctx = train_steps(cfg, 0)
    batch = next(iter(ctx.train.batches(cfg.batch_size)))
    reference = copy.deepcopy(model)
    boosting_loss(reference.head_logits("a", batch.audio), batch.y, 0.5).backward()
    expected = {name: (p - lr * (p.grad + wd * p)).detach() for name, p in reference.audio_encoder.named_parameters()}
    ctx.method.train_step(model, batch, ctx.optimizer, ctx)
    for name, p in model.audio_encoder.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)

"""AMCo against BalanceBenchmark's implementation (@4c1482f; no official code): `trainer/AMCo_trainer.py` and
`BaseClassifierAMCoModel` in `models/avclassify_model.py`, by hand values of its mask schedule, its dependence
flags, its model and its loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmbench.methods.amco import dependent_flags, masked_classes
from mmbench.train.models import Outputs

from .conftest import assert_resumes_identical, tiny_config, training_setup


def _schedule(epoch: int, batches: int, eps: float = 0.3, num_classes: int = 6) -> list[int]:
    """N per batch of an epoch, l_t summed in floats as trainer lines 70-83 do."""
    l_t, counts = 0.0, []
    for _ in range(batches):
        counts.append(masked_classes(l_t, eps, num_classes))
        l_t += epoch / 10
    return counts


def test_mask_schedule_of_trainer_lines_72_83():
    # epoch 1: l_t = 0, 0.1, 0.2, 0.3 (+fp) -> p_t = 0, 0.5, 0.866, 1 -> N = 0, 3, 5, 6 (truncated)
    assert _schedule(epoch=1, batches=5) == [0, 3, 5, 6, 6]
    assert _schedule(epoch=0, batches=4) == [0, 0, 0, 0]  # l_t never moves in epoch 0
    assert _schedule(epoch=2, batches=3) == [0, 5, 6]


def test_dependence_is_the_softmax_share_of_trainer_lines_146_155():
    # one sample, C = 2: softmax over (2, 0 | 0, 0): audio block (e^2 + 1) / (e^2 + 3) = 0.8076
    flags = dependent_flags(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), sigma=0.5)
    assert flags.tolist() == [True, False]
    # averaged over the batch: a second sample with the mirrored logits makes the shares equal
    both = dependent_flags(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0]]), 0.5)
    assert both.tolist() == [False, False]
    assert dependent_flags(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), sigma=0.9).tolist() == [False] * 2


def test_model_sums_the_slices_into_linear_star_and_predicts_with_their_sum():
    """Model lines 352-373: z_m = f_m W_m^T + b/2, masked when dependent; out = linear_star(z_a + z_v); the
    evaluation output is z_a + z_v (lines 303-322)."""
    _, splits, ctx, model, _ = training_setup(tiny_config("amco"))
    batch = next(splits.train.batches(4))
    model.eval()
    with torch.no_grad():
        feat_a, feat_v = model.audio_encoder(batch.audio), model.visual_encoder(batch.visual)
        w, b = model.fusion.fc.weight, model.fusion.fc.bias
        z_a, z_v = feat_a @ w[:, : feat_a.shape[1]].T + b / 2, feat_v @ w[:, feat_a.shape[1]:].T + b / 2
        out = model(batch.audio, batch.visual)
        torch.testing.assert_close(out.logits, model.linear_star(z_a + z_v))
        predicted = ctx.method.predict(model, batch, ctx)
        torch.testing.assert_close(predicted.logits, z_a + z_v)
        mask = torch.tensor([1.0, 0.0] * (ctx.num_classes // 2) + [1.0] * (ctx.num_classes % 2))
        masked = model(batch.audio, batch.visual, mask, None)
        torch.testing.assert_close(masked.logits_a, z_a * mask)
        torch.testing.assert_close(masked.logits, model.linear_star(z_a * mask + z_v))
    ctx.cfg.hparams["predict_linear_star"] = True
    with torch.no_grad():
        torch.testing.assert_close(ctx.method.predict(model, batch, ctx).logits, out.logits)


def test_loss_adds_each_slices_cross_entropy_in_the_modulation_epochs():
    _, splits, ctx, model, _ = training_setup(tiny_config("amco", modulation_ends=2))
    y = torch.tensor([0, 1])
    out = Outputs(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
                  torch.zeros(2, 2))
    batch = type("B", (), {"y": y})()
    ctx.epoch = 1
    loss = ctx.method.loss(out, batch, ctx)
    expected = sum(F.cross_entropy(z, y) for z in (out.logits, out.logits_a, out.logits_v))
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert ctx.method.dependent.tolist() == [True, False]
    ctx.epoch = 3
    assert float(ctx.method.loss(out, batch, ctx)) == pytest.approx(float(F.cross_entropy(out.logits, y)), abs=1e-6)


def test_a_dependent_modality_is_fully_masked_once_the_schedule_saturates():
    """Epoch 1: batch 1 has no flags yet; by batch 4 (N = C) the dependent modality's slice is zero, its
    cross-entropy is log C and sends it no gradient."""
    dataset, splits, ctx, model, optimizer = training_setup(tiny_config("amco", batch_size=8))
    method, ctx.epoch = ctx.method, 1
    method.on_epoch_start(model, ctx)
    batches = splits.train.batches(8, ctx.generator("order"))
    outs = []
    for _ in range(4):
        batch = dataset.transform(next(batches), True, ctx.generator("augment"))
        outs.append(method.train_step(model, batch, optimizer, ctx)[0])
    assert method.l_t == pytest.approx(0.4)
    assert outs[0].logits_a.abs().sum() > 0 and outs[0].logits_v.abs().sum() > 0  # no flags in batch 1
    masked_a = (outs[3].logits_a == 0).all().item()
    masked_v = (outs[3].logits_v == 0).all().item()
    assert masked_a or masked_v
    assert not (masked_a and masked_v)  # sigma 0.5: at most one of two shares exceeds it


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("amco", tmp_path)


"""G2D (Rakib & Bagavathi, ICCV 2025) against the official code, rAIson-Lab/G2D @95969d8: hand values of the
logit distillation (`student.py` lines 179-185: kl_div(log_softmax(z/T), softmax(t/T), 'batchmean') * T^2), the
gate (`utils/utils.py` lines 243-284: the teacher whose softmax puts more summed probability on the true
classes has its modality's 4-D gradients multiplied by 0, in epochs 0-150 inclusive), the late-fusion head
(`models/fusion_modules.py` lines 27-42) and the whole loss (`student.py` lines 99-139), then its effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.methods.g2d import gate, logit_distillation
from mmbench.results import read_epochs

from .conftest import assert_resumes_identical, first_batch_setup


def test_logit_distillation_is_the_temperature_scaled_kl_of_teacher_to_student():
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    # softmax(teacher) = (0.75, 0.25), softmax(student) = (0.5, 0.5): 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812
    assert logit_distillation(student, teacher, 1.0).item() == pytest.approx(0.130812, abs=1e-6)
    # T = 2: softmax(teacher / 2) = (√3, 1) / (√3 + 1) = (0.633975, 0.366025); KL = 0.036341, times T^2 = 0.145363
    assert logit_distillation(student, teacher, 2.0).item() == pytest.approx(0.145363, abs=1e-6)
    # batchmean: a batch of the same row twice has the same value; identical logits distil nothing
    assert logit_distillation(student.repeat(2, 1), teacher.repeat(2, 1), 1.0).item() == pytest.approx(0.130812,
                                                                                                      abs=1e-6)
    assert logit_distillation(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_the_gate_freezes_the_modality_whose_teacher_is_surer_of_the_true_classes():
    y = torch.tensor([0, 1])
    sure, unsure = torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # scores: sure 2 x 0.982014 = 1.964, unsure 2 x 0.731059 = 1.462
    assert [c.item() for c in gate(sure, unsure, y)] == [0.0, 1.0]  # audio's teacher surer: audio frozen
    assert [c.item() for c in gate(unsure, sure, y)] == [1.0, 0.0]
    assert [c.item() for c in gate(sure, sure, y)] == [1.0, 1.0]  # a tie: the release raises, mmbench trains on


def _step_setup(**overrides):
    return first_batch_setup("g2d", **overrides)


def test_the_loss_is_ce_plus_both_teachers_logit_and_feature_distillation():
    batch, ctx, model = _step_setup(temperature=2.0, logit_weight=0.5, feature_weight=3.0)
    out = ctx.method.forward(model, batch, ctx)
    torch.testing.assert_close(out.logits, (model.fc_a(out.feat_a) + model.fc_v(out.feat_v)) / 2)  # late fusion
    t_a = ctx.method.teachers["teacher_a"](batch.audio, batch.visual)
    t_v = ctx.method.teachers["teacher_v"](batch.audio, batch.visual)

    def kl(teacher):
        p = F.softmax(teacher / 2.0, dim=1)
        return (p * (p.log() - F.log_softmax(out.logits / 2.0, dim=1))).sum(1).mean() * 4.0

    expected = (F.cross_entropy(out.logits, batch.y) + 0.5 * (kl(t_a.logits) + kl(t_v.logits))
                + 3.0 * (((out.feat_a - t_a.feat_a) ** 2).mean() + ((out.feat_v - t_v.feat_v) ** 2).mean()))
    torch.testing.assert_close(ctx.method.loss(out, batch, ctx), expected)


@pytest.mark.parametrize("epoch, gated", [(0, True), (2, True), (3, False)])
def test_after_backward_zeroes_the_frozen_encoders_convolution_gradients_in_the_modulation_epochs(epoch, gated):
    batch, ctx, model = _step_setup(modulation_ends=2)
    ctx.epoch = epoch
    out = ctx.method.forward(model, batch, ctx)
    ctx.method.loss(out, batch, ctx).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    coeff_a, coeff_v = gate(*ctx.method.teacher_logits, batch.y)
    ctx.method.after_backward(model, out, batch, ctx)
    for name, param in model.named_parameters():
        if name not in before:
            continue
        coeff = coeff_a if name.startswith("audio_encoder") else coeff_v if name.startswith("visual_encoder") else 1
        want = before[name] * coeff if gated and param.ndim == 4 else before[name]
        torch.testing.assert_close(param.grad, want, msg=name)
    assert {coeff_a.item(), coeff_v.item()} == {0.0, 1.0}  # the untrained teachers' scores differ


def test_g2d_resumes_after_a_kill_identical_with_its_teachers_reloaded(tmp_path):
    assert_resumes_identical("g2d", tmp_path, epochs=3, stop_after=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_g2d_distillation_lifts_the_slow_modality_and_its_gate_freezes_one_modality_per_batch(synthetic_run, seed):
    """On `synthetic` joint training leaves the visual half of the head near chance. G2D's distillation alone
    (the gate off: modulation_ends=-1) lifts it, as UMT's does. The gate freezes, on every batch, the
    modality whose teacher is surer: on the full protocol that is visual (its teacher reaches 75-84 % against
    audio's 75 %, and is surer of the true classes), so the visual encoder's convolutions never train and the
    visual head stays at chance (benchmarks/imbalance_effect.py, 5 seeds: -29 pp visual, -2.6 pp fused)."""
    joint = synthetic_run("joint", seed, epochs=4)
    ungated = synthetic_run("g2d", seed, epochs=4, modulation_ends=-1)
    gated = synthetic_run("g2d", seed, epochs=4)
    assert ungated["best_val_acc_head_v"] > joint["best_val_acc_head_v"] + 0.05
    epochs = read_epochs(synthetic_run.out).set_index("run_id")
    shares = epochs.loc[[gated["run_id"]], ["diag_g2d_audio_frozen", "diag_g2d_visual_frozen"]]
    assert (shares.sum(axis=1) == 1).all()  # exactly one modality frozen per batch (no tie)
    assert "diag_g2d_audio_frozen" not in epochs.loc[[ungated["run_id"]]].dropna(axis=1).columns

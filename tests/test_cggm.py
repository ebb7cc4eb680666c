"""CGGM (Guo et al., NeurIPS 2024) against the official code, zrguo/CGGM @21e428c: hand values of the coefficients
(`src/foodtrain.py` lines 112-120: coeff_m = (sum Delta - Delta_m) / (sum Delta + 1e-8) from batch-accuracy
changes), of the direction term (lines 122-123 with `src/eval_metrics.py` lines 165-173: the cosine of the
output-layer weights), the whole step (lines 85-135: the stale term's gradient on the fusion weights only, the
classifiers on detached features, the encoders' gradients times rho * coeff, the clip), then its effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.methods.cggm import coefficients, direction_term
from mmbench.results import read_epochs

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_coefficients_favour_the_modality_whose_batch_accuracy_improved_less():
    # METHODS2 §20.3: acc(t-1) = (0.5, 0.4), acc(t) = (0.6, 0.45): Delta = (0.1, 0.05), coeff = (1/3, 2/3)
    coeff = coefficients(torch.tensor([0.6, 0.45], dtype=torch.float64), torch.tensor([0.5, 0.4], dtype=torch.float64))
    assert coeff.tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-7)
    assert (coeff * 1.3).tolist() == pytest.approx([0.43333, 0.86667], abs=1e-5)
    # unchanged accuracies: Delta = 0, coeff = 1e-8 / 1e-8 = 1 each
    assert coefficients(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])).tolist() == [1.0, 1.0]
    # changes that cancel (one more and one fewer right of 32): coeff_a = (1e-8 - 1/32) / 1e-8, as released
    coeff = coefficients(torch.tensor([17 / 32, 15 / 32]), torch.tensor([0.5, 0.5]))
    assert coeff.tolist() == pytest.approx([-3124999.0, 3125001.0], rel=1e-9)


def test_direction_term_is_the_coefficient_weighted_misalignment_of_classifier_and_fusion_weights():
    one, other = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert direction_term(torch.tensor([1.0, 1.0]), [one, other], [one, other]).item() == pytest.approx(0.0)
    assert direction_term(torch.tensor([1.0, 1.0]), [one, other], [other, one]).item() == pytest.approx(1.0)
    # cos([1, 0], [1, 1]) = 1/sqrt 2, cos([0, 1], [0, 1]) = 1: (|-1| + |2| - (-1/sqrt 2 + 2)) / 2 = 0.853553
    both = torch.tensor([[1.0, 1.0]])
    value = direction_term(torch.tensor([-1.0, 2.0]), [one, other], [both, other]).item()
    assert value == pytest.approx((3 - (2 - 1 / math.sqrt(2))) / 2, abs=1e-6)


def _setup(**overrides):
    cfg = tiny_config("cggm", **overrides)
    dataset, splits, ctx, model, optimizer = training_setup(cfg)
    batches = splits.train.batches(cfg.batch_size, ctx.generator("order"))
    next_batch = lambda: dataset.transform(next(batches), True, ctx.generator("augment"))  # noqa: E731
    return next_batch, ctx, model, optimizer


def _ce_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch.audio, batch.visual)
    F.cross_entropy(out.logits, batch.y).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _cosine_gradient(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d cos(a, w) / dw = a / (|a| |w|) - cos(a, w) w / |w|^2 (by hand, not autograd)."""
    cos = (a * w).sum() / (a.norm() * w.norm())
    return a / (a.norm() * w.norm()) - cos * w / w.norm() ** 2


@pytest.mark.parametrize("coeff_clip", [0.0, 0.5])
def test_a_step_scales_encoders_by_the_coefficients_and_adds_the_stale_direction_gradient_to_the_fusion_head(
        coeff_clip):
    next_batch, ctx, model, optimizer = _setup(clip=0.0, lam=0.5, rho=1.3, coeff_clip=coeff_clip)
    method = ctx.method
    first = next_batch()
    optimizer.zero_grad(set_to_none=True)
    method.modulated_backward(model, first, ctx)  # step 1: no direction term yet
    feats_1 = model.encode(first.audio, first.visual)
    heads_1 = [model.classifiers[m](f) for m, f in zip(("audio", "visual"), feats_1, strict=True)]
    acc_1 = torch.stack([(h.argmax(1) == first.y).double().mean() for h in heads_1])
    torch.testing.assert_close(method.previous_accuracy, acc_1)
    stale = {"coeff": method.direction["coeff"].clone(),
             "cls": [model.classifiers[m].weight.detach().clone() for m in ("audio", "visual")],
             "fusion": model.fusion.fc.weight.detach().clone()}
    method.classifier_optimizer.step()
    optimizer.step()

    second = next_batch()
    out, ce = _ce_grads(model, second)
    optimizer.zero_grad(set_to_none=True)
    method.modulated_backward(model, second, ctx)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    feats = (out.feat_a.detach(), out.feat_v.detach())
    accuracy = torch.stack([(model.classifiers[m](f).argmax(1) == second.y).double().mean()
                            for m, f in zip(("audio", "visual"), feats, strict=True)])
    delta = accuracy - acc_1
    coeff = (delta.sum() + 1e-8 - delta) / (delta.sum() + 1e-8)
    if coeff_clip:
        coeff = coeff.clamp(0.0, coeff_clip)
    torch.testing.assert_close(method.direction["coeff"], coeff)
    for name, grad in grads.items():
        if name.startswith(("audio_encoder", "visual_encoder")):
            c = coeff[0] if name.startswith("audio") else coeff[1]
            torch.testing.assert_close(grad, ce[name] * (c * 1.3).float(), msg=name)
    # the fusion weights: CE plus 0.5 * d/dW [-(c_a cos_a + c_v cos_v) / 2] at step 1's weights and coefficients
    dim_a = model.fusion.dim_a
    halves = (stale["fusion"][:, :dim_a], stale["fusion"][:, dim_a:])
    extra = torch.cat([-0.5 * float(c) / 2 * _cosine_gradient(a, w)
                       for c, a, w in zip(stale["coeff"], stale["cls"], halves, strict=True)], dim=1)
    torch.testing.assert_close(grads["fusion.fc.weight"], ce["fusion.fc.weight"] + extra)
    torch.testing.assert_close(grads["fusion.fc.bias"], ce["fusion.fc.bias"])
    # the classifiers: their own CE on the detached features only (the direction term's part is zeroed)
    for m, f in zip(("audio", "visual"), feats, strict=True):
        weight = model.classifiers[m].weight
        want, = torch.autograd.grad(F.cross_entropy(model.classifiers[m](f), second.y), weight)
        torch.testing.assert_close(weight.grad, want, msg=m)


def test_the_models_gradients_are_clipped_and_the_classifiers_have_their_own_optimiser():
    next_batch, ctx, model, optimizer = _setup(clip=0.01, classifier_lr_ratio=0.25, classifier_wd_ratio=2.0,
                                               optimizer="adamw", lr=0.1, weight_decay=0.01)
    optimizer.zero_grad(set_to_none=True)
    ctx.method.modulated_backward(model, next_batch(), ctx)
    main = ctx.method.parameters(model, ctx)
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in main])).item() == pytest.approx(0.01)
    in_main = {id(p) for group in optimizer.param_groups for p in group["params"]}
    classifier_params = list(model.classifiers.parameters())
    assert not any(id(p) in in_main for p in classifier_params)
    group, = ctx.method.classifier_optimizer.param_groups
    assert isinstance(ctx.method.classifier_optimizer, torch.optim.AdamW)  # the run's family
    assert (group["lr"], group["weight_decay"]) == pytest.approx((0.025, 0.02))
    assert len(group["params"]) == len(classifier_params)


def test_cggm_resumes_after_a_kill_identical(tmp_path):
    assert_resumes_identical("cggm", tmp_path, epochs=3, stop_after=1)


@pytest.mark.parametrize("seed", [0])
def test_cggm_as_released_reverses_gradients_and_starves_the_slow_modality(synthetic_run, seed):
    """On `synthetic` the batch accuracies' changes often cancel, so the released coefficients reverse one
    encoder's gradient on a share of steps and the clip (0.8) bounds those steps: the slow visual modality
    learns less than under joint training (benchmarks/imbalance_effect.py, 5 seeds: -25.8 pp visual, -2.6 pp
    fused; with coeff_clip=1, -22.4 pp visual)."""
    run = synthetic_run("cggm", seed)  # the full protocol: at 4 epochs joint's visual head is still near chance
    epochs = read_epochs(synthetic_run.out).set_index("run_id").loc[[run["run_id"]]]
    assert (epochs["diag_cggm_reversed"] > 0.1).all()
    joint = synthetic_run("joint", seed)
    assert run["final_acc_head_v"] < joint["final_acc_head_v"] - 0.1

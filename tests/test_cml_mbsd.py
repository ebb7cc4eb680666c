"""CML and MBSD against BalanceBenchmark's implementations (`balancemm/trainer/CML_trainer.py`,
`MBSD_trainer.py` @4c1482f; neither method has official code): hand values of METHODS2 §12.4 and §13.4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.method import RunContext
from mmbench.methods.cml import confidence_penalty
from mmbench.methods.mbsd import distillation_terms
from mmbench.registry import METHODS
from mmbench.train import engine
from mmbench.train.models import Outputs

from .conftest import assert_resumes_identical, tiny_config


def _two_class(confidences: list[float]) -> torch.Tensor:
    """Logits whose softmax is (c, 1 - c) per row: the largest probability is c for c >= 1/2."""
    return torch.tensor([[math.log(c), math.log(1 - c)] for c in confidences])


def test_cml_penalty_of_lines_19_22_hinges_the_batch_sum():
    fused = _two_class([0.9, 0.6])
    assert float(confidence_penalty(fused, _two_class([0.7, 0.8]), per_sample=False)) == pytest.approx(0.0, abs=1e-6)
    assert float(confidence_penalty(fused, _two_class([0.95, 0.8]), per_sample=False)) == pytest.approx(0.25)
    # per sample: only the second sample gains confidence (0.8 - 0.6)
    assert float(confidence_penalty(fused, _two_class([0.7, 0.8]), per_sample=True)) == pytest.approx(0.2)


def _cml(epoch: int = 0, **hparams):
    cfg = tiny_config("cml", **hparams)
    ctx = RunContext(cfg, 2, torch.device("cpu"), engine.make_generators(0, torch.device("cpu")), epoch=epoch)
    return METHODS.get("cml")(ctx), ctx


def test_cml_loss_of_lines_185_201_removes_one_modality_and_adds_back_its_half_bias():
    method, ctx = _cml(lam=0.5)
    method.removed = "a"
    method.head_bias = torch.tensor([0.2, -0.2])
    logits_a, logits_v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.5]])
    out = Outputs(logits_a + logits_v, logits_a, logits_v)
    batch = type("B", (), {"y": torch.tensor([0])})()
    without = logits_v + torch.tensor([0.1, -0.1])  # the visual slice with the full bias: (0.1, 0.4)
    penalty = max(0.0, float(F.softmax(without, 1).max() - F.softmax(out.logits, 1).max()))
    expected = (F.cross_entropy(out.logits, batch.y) + F.cross_entropy(without, batch.y)) / 2 + 0.5 * penalty
    assert float(method.loss(out, batch, ctx)) == pytest.approx(float(expected))
    ctx.epoch = 81  # past modulation_ends: the fused cross-entropy alone
    assert float(method.loss(out, batch, ctx)) == pytest.approx(float(F.cross_entropy(out.logits, batch.y)))


def test_cml_draws_the_removed_modality_once_per_epoch_from_the_method_stream():
    draws = []
    for _ in range(2):
        method, ctx = _cml()
        removed = []
        for epoch in range(12):
            ctx.epoch = epoch
            method.on_epoch_start(None, ctx)
            removed.append(method.removed)
        draws.append(removed)
    assert draws[0] == draws[1] and set(draws[0]) == {"a", "v"}


def test_mbsd_terms_of_lines_132_158_by_hand():
    """One sample, p_a = (0.7, 0.2, 0.1) (right), p_v = (0.2, 0.5, 0.3) (wrong), y = 0: w = 0.7 - 0.2,
    KL = 0.2 (ln 0.2 - 0.7) = -0.461888, RS = the mean squared logit difference."""
    p_a, p_v = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.2, 0.5, 0.3]])
    rs, divergence = distillation_terms(p_a.log(), p_v.log(), torch.tensor([0]))
    assert float(divergence) == pytest.approx(0.5 * -0.461888, abs=1e-6)
    squared = [(math.log(a) - math.log(v)) ** 2 for a, v in ((0.7, 0.2), (0.2, 0.5), (0.1, 0.3))]
    assert float(rs) == pytest.approx(0.5 * sum(squared) / 3, rel=1e-6)
    _, proper = distillation_terms(p_a.log(), p_v.log(), torch.tensor([0]), kl="proper")
    assert float(proper) == pytest.approx(0.5 * 0.2 * (math.log(0.2) - math.log(0.7)), abs=1e-6)


def test_mbsd_weights_are_zero_where_both_modalities_are_wrong():
    p_a, p_v = torch.tensor([[0.2, 0.7, 0.1]]), torch.tensor([[0.3, 0.5, 0.2]])
    rs, divergence = distillation_terms(p_a.log(), p_v.log(), torch.tensor([0]))
    assert float(rs) == 0 and float(divergence) == 0


@pytest.mark.parametrize("method", ["cml", "mbsd"])
def test_a_run_resumed_after_an_interruption_ends_identical(method, tmp_path):
    assert_resumes_identical(method, tmp_path)

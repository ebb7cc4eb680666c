"""MMCosine against the official code (GeWu-Lab/MMCosine_ICASSP23 @00ba0a9, `main_CD.py`), by hand values."""

from __future__ import annotations

import pytest
import torch

from mmbench.config import ConfigError, resolve
from mmbench.data import Batch
from mmbench.method import RunContext
from mmbench.methods.mmcosine import cosine_logits
from mmbench.registry import METHODS
from mmbench.train import engine
from mmbench.train.models import build_av_model

from .conftest import assert_resumes_identical, tiny_config


def test_cosine_logits_equal_the_hand_values():
    """main_CD.py:113-117: normalize(f_a) @ normalize(W_a^T, dim=0) * scaling. f_a = (3, 4) normalises to
    (0.6, 0.8); the class rows (1, 0) and (0, 2) to (1, 0) and (0, 1); times s = 10: (6, 8)."""
    z = cosine_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 10.0)
    torch.testing.assert_close(z, torch.tensor([[6.0, 8.0]]))
    # a feature's norm and a class row's norm change nothing; opposite directions give -s
    z = cosine_logits(torch.tensor([[30.0, 40.0], [-1.0, 0.0]]), torch.tensor([[5.0, 0.0], [0.0, 0.5]]), 10.0)
    torch.testing.assert_close(z, torch.tensor([[6.0, 8.0], [-10.0, 0.0]]))


def _setup(**hparams):
    cfg = tiny_config("mmcosine", **hparams)
    ctx = RunContext(cfg, 6, torch.device("cpu"), engine.make_generators(0, torch.device("cpu")))
    torch.manual_seed(0)
    model = build_av_model(cfg, 6)
    batch = Batch(torch.randn(5, 1, 12, 12), torch.randn(5, 1, 3, 12, 12), torch.arange(5), torch.arange(5))
    return METHODS.get("mmcosine")(ctx), model, batch, ctx


def test_training_logits_are_the_summed_scaled_cosines_of_each_half_of_the_head():
    """main_CD.py:113-118: audio uses fc_out.weight[:, :512], visual [:, 512:]; no bias; out = out_a + out_v."""
    method, model, batch, ctx = _setup(scaling=7.0)
    out = method.forward(model, batch, ctx)
    feat_a, feat_v = model.encode(batch.audio, batch.visual)
    w = model.fusion.fc.weight
    dim_a = feat_a.shape[1]
    for feat, half, logits in ((feat_a, w[:, :dim_a], out.logits_a), (feat_v, w[:, dim_a:], out.logits_v)):
        cos = (feat @ half.T) / feat.norm(dim=1, keepdim=True) / half.norm(dim=1)
        torch.testing.assert_close(logits, 7.0 * cos)
    torch.testing.assert_close(out.logits, out.logits_a + out.logits_v)
    assert out.logits.abs().max() <= 14.0 + 1e-5  # |s cos_a + s cos_v| <= 2 s


def test_the_bias_takes_no_gradient_and_the_head_does():
    method, model, batch, ctx = _setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.train_step(model, batch, optimizer, ctx)
    assert model.fusion.fc.bias.grad is None
    assert model.fusion.fc.weight.grad.abs().sum() > 0


def test_released_evaluation_predicts_with_the_linear_concat_head():
    """main_CD.py:181,196: the fused prediction is softmax(out), `out` the model's W [f_a; f_v] + b; the
    per-modality predictions are the cosine logits (lines 185-189). eval_logits=cosine uses s (cos_a + cos_v)."""
    method, model, batch, ctx = _setup()
    with torch.no_grad():
        model.fusion.fc.bias.copy_(torch.arange(6.0))
        released = method.predict(model, batch, ctx)
        plain = model(batch.audio, batch.visual)
        cosine = METHODS.get("mmcosine")(RunContext(tiny_config("mmcosine", eval_logits="cosine"), 6, ctx.device,
                                                    ctx.generators)).predict(model, batch, ctx)
        trained = method.forward(model, batch, ctx)
    torch.testing.assert_close(released.logits, plain.logits)
    torch.testing.assert_close(cosine.logits, trained.logits)
    for out in (released, cosine):
        torch.testing.assert_close(out.logits_a, trained.logits_a)
        torch.testing.assert_close(out.logits_v, trained.logits_v)
    assert not torch.allclose(released.logits, cosine.logits)


def test_only_concat_fusion_and_the_official_profile_for_cremad_only():
    with pytest.raises(ConfigError, match="fusion concat"):
        resolve("mmcosine", "synthetic", overrides={"fusion": "sum"})
    cfg = resolve("mmcosine", "cremad", 0, "official")
    # main_CD.py:59-66 and 262-265: SGD 1e-3 (momentum 0.9, wd 1e-4), StepLR(100, 0.1), 200 epochs, batch 32
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.lr_step, cfg.lr_gamma, cfg.epochs,
            cfg.batch_size, cfg.hparams["scaling"], cfg.data["class_order"]) == \
        ("sgd", 1e-3, 0.9, 1e-4, 100, 0.1, 200, 32, 10.0, "sorted")
    with pytest.raises(ConfigError, match="no official settings for dataset kinetics-sounds"):
        resolve("mmcosine", "kinetics-sounds", 0, "official")


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("mmcosine", tmp_path)

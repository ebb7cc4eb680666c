"""Data remixing against the official code (MatthewMaxy/Remix_ICML2025 @80898aa, `train.py`, `models/models.py`), by
hand values of its divergence, its assignment, its epoch of two modality sets and its losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.config import resolve
from mmbench.methods.remix import divergence_from_uniform
from mmbench.train.models import Outputs

from .conftest import assert_resumes_identical, tiny_config, training_setup


def test_divergence_from_uniform_of_lines_52_58():
    # p = (1/2, 1/2, 0, 0, 0, 0): sum p log2(6 p) = log2 3 (the zeros clipped at 1e-9 add about -1e-7)
    half = torch.tensor([[0.0, 0.0, -1e4, -1e4, -1e4, -1e4]])
    assert float(divergence_from_uniform(half)) == pytest.approx(math.log2(3), abs=1e-6)
    assert float(divergence_from_uniform(torch.zeros(1, 6))) == pytest.approx(0.0, abs=1e-12)
    sure = torch.tensor([[50.0, 0, 0, 0, 0, 0]])
    assert float(divergence_from_uniform(sure)) == pytest.approx(math.log2(6), abs=1e-6)


def _plan(monkeypatch, warmup=1, epoch=1):
    _, splits, ctx, model, _ = training_setup(tiny_config("remix", warmup=warmup))
    n, c = len(splits.train), ctx.num_classes
    confident, unsure = torch.zeros(n, c), torch.zeros(n, c)
    confident[:, 0] = 5.0
    even = torch.arange(n) % 2 == 0
    # even rows: audio sure, visual unsure -> KL_a > KL_v -> video set; odd rows the other way -> audio set
    logits_a = torch.where(even[:, None], confident, unsure)
    logits_v = torch.where(even[:, None], unsure, confident)
    monkeypatch.setattr(ctx, "infer", lambda model, split, **kw: {"logits_a": logits_a, "logits_v": logits_v})
    ctx.epoch = epoch
    return ctx, model, ctx.method.epoch_plan(model, ctx), even


def test_the_plan_is_the_video_set_then_the_audio_set_as_lines_127_170(monkeypatch):
    ctx, _, plan, even = _plan(monkeypatch)
    video, audio = plan[: ctx.method.video_steps], plan[ctx.method.video_steps:]
    assert video and audio
    video_rows, audio_rows = torch.cat([p.rows for p in video]), torch.cat([p.rows for p in audio])
    assert sorted(video_rows.tolist()) == torch.nonzero(even).flatten().tolist()  # each row once, in its set
    assert sorted(audio_rows.tolist()) == torch.nonzero(~even).flatten().tolist()
    assert video_rows.tolist() != sorted(video_rows.tolist())  # shuffled
    assert all(p.keep_v is None and not p.keep_a.any() for p in video)  # audio removed
    assert all(p.keep_a is None and not p.keep_v.any() for p in audio)  # visual removed
    assert all(len(p.rows) <= ctx.cfg.batch_size for p in plan)


def test_warm_up_epochs_keep_the_engines_pass(monkeypatch):
    _, _, plan, _ = _plan(monkeypatch, warmup=2, epoch=1)
    assert plan is None


def test_losses_of_the_warm_up_and_of_each_set(monkeypatch):
    """Lines 117-120 (warm-up: CE + 0.5 CE_a + 0.5 CE_v), 144-146 (video set: CE + CE_v), 160-162 (audio set:
    CE + CE_a)."""
    ctx, _, plan, _ = _plan(monkeypatch)
    method, y = ctx.method, torch.tensor([0, 1])
    out = Outputs(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
                  torch.tensor([[0.0, 3.0], [1.0, 0.0]]))
    batch = type("B", (), {"y": y})()
    ce, ce_a, ce_v = (F.cross_entropy(z, y) for z in (out.logits, out.logits_a, out.logits_v))
    ctx.step = 0
    assert float(method.loss(out, batch, ctx)) == pytest.approx(float(ce + ce_v))
    ctx.step = method.video_steps
    assert float(method.loss(out, batch, ctx)) == pytest.approx(float(ce + ce_a))
    ctx.epoch = 0
    assert float(method.loss(out, batch, ctx)) == pytest.approx(float(ce + 0.5 * ce_a + 0.5 * ce_v))


def test_model_adds_a_head_per_modality_to_the_concat_head():
    _, splits, ctx, model, _ = training_setup(tiny_config("remix"))
    batch = next(splits.train.batches(4))
    with torch.no_grad():
        out = model(batch.audio, batch.visual)
        feat_a, feat_v = model.audio_encoder(batch.audio), model.visual_encoder(batch.visual)
        torch.testing.assert_close(out.logits, model.fusion(feat_a, feat_v).logits)
        torch.testing.assert_close(out.logits_a, model.head_a(feat_a))
        torch.testing.assert_close(out.logits_v, model.head_v(feat_v))


def test_official_profile_follows_run_train_sh():
    cfg = resolve("remix", "cremad", 0, "official")
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.lr_step, cfg.epochs, cfg.batch_size, cfg.data["frames"]) == \
        ("adam", 5e-5, 1e-4, 30, 60, 64, 2)
    assert cfg.hparams["warmup"] == 10


def test_a_run_resumed_at_a_remixed_epoch_ends_identical(tmp_path):
    assert_resumes_identical("remix", tmp_path, warmup=1)

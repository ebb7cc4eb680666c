"""Modality valuation (Wei et al., CVPR 2024) against the official code, GeWu-Lab/Valuate-and-Enhance-Multimodal-
Cooperation @7ed12b0: the contributions (`code/sample_level.py` lines 99-122: fused value 2, single-modality
values 1, phi = (v_m + v_all - v_other) / 2), the sample-level copies (`code/datasets/dataloader.py` lines
154-186), the modality-level share (lines 297-316 and `code/modality_level.py` lines 143-161), the plan the
engine trains, then the effect."""

from __future__ import annotations

import math

import pytest
import torch

from mmbench.methods.valuation import contributions, copies, resampling_share
from mmbench.results import read_epochs

from .conftest import assert_resumes_identical, tiny_config, training_setup

# (fused, audio alone, visual alone) right -> copies on audio alone, on visual alone: the release (fused value
# 2) and BalanceBenchmark (fused value 1), METHODS2 §7.3's table
PATTERNS = [((1, 1, 1), (0, 0), (1, 1)), ((1, 1, 0), (0, 1), (0, 2)), ((1, 0, 1), (1, 0), (2, 0)),
            ((1, 0, 0), (0, 0), (1, 1)), ((0, 1, 1), (2, 2), (2, 2)), ((0, 1, 0), (1, 3), (1, 3)),
            ((0, 0, 1), (3, 1), (3, 1)), ((0, 0, 0), (2, 2), (2, 2))]


@pytest.mark.parametrize("fused_value, column", [(2.0, 1), (1.0, 2)])
def test_copies_per_correctness_pattern(fused_value, column):
    right = torch.tensor([p[0] for p in PATTERNS], dtype=torch.bool)
    phi_a, phi_v = contributions(right[:, 0], right[:, 1], right[:, 2], fused_value)
    assert torch.stack([copies(phi_a), copies(phi_v)], 1).tolist() == [list(p[column]) for p in PATTERNS]


def test_contributions_by_hand():
    # fused right, audio alone right, visual alone wrong: phi_a = (1 + 2 - 0) / 2 = 1.5, phi_v = (0 + 2 - 1) / 2
    phi_a, phi_v = contributions(torch.tensor([True]), torch.tensor([True]), torch.tensor([False]))
    assert (phi_a.item(), phi_v.item()) == (1.5, 0.5)
    # the bounds are exclusive: 1.0 and 0.4 and -0.1 sit in no band's inside except where stated
    assert copies(torch.tensor([1.0, 0.99, 0.4, 0.39, -0.1, -0.11])).tolist() == [0, 1, 0, 2, 0, 3]


def test_modality_level_share_of_added_rows():
    # gaps 0.5 and 0.2: |0.3| * 2/3 = 0.2
    assert resampling_share(0.5, 0.2, 1.0, "linear") == pytest.approx(0.2)
    assert resampling_share(0.2, 0.5, 0.5, "linear") == pytest.approx(0.1)
    assert resampling_share(0.5, 0.2, 1.0, "square") == pytest.approx(0.2**1.5)
    assert resampling_share(0.5, 0.2, 2.0, "tanh") == pytest.approx(math.tanh(0.4))


def _fixed_values(method: str, right: list[tuple[int, int, int]], **overrides):
    """The method's context with `ctx.infer` giving predictions right or wrong as `right` says, row i taking
    pattern i modulo its length."""
    cfg = tiny_config(method, warmup=1, **overrides)
    _, splits, ctx, model, _ = training_setup(cfg)
    n, y = len(splits.train), splits.train.y
    rows = torch.tensor([right[i % len(right)] for i in range(n)], dtype=torch.bool)

    def logits(ok):  # right: the label's class; wrong: the next one
        return torch.nn.functional.one_hot(torch.where(ok, y, (y + 1) % ctx.num_classes), ctx.num_classes).float()

    ctx.infer = lambda model, split, forward, augment: {"logits": logits(rows[:, 0]), "logits_a": logits(rows[:, 1]),
                                                        "logits_v": logits(rows[:, 2])}
    return ctx, model, n


def _planned(plan):
    rows = torch.cat([b.rows for b in plan])
    return rows, torch.cat([b.keep_a for b in plan]), torch.cat([b.keep_v for b in plan])


def test_sample_valuation_plans_every_row_once_plus_its_single_modality_copies():
    ctx, model, n = _fixed_values("sample-valuation", [p[0] for p in PATTERNS])
    ctx.epoch = 0
    assert ctx.method.epoch_plan(model, ctx) is None  # warm-up
    ctx.epoch = 1
    plan = ctx.method.epoch_plan(model, ctx)
    assert all(len(b.rows) == 32 for b in plan[:-1])
    rows, keep_a, keep_v = _planned(plan)
    for row in (0, 5, 6, 7):
        want_a, want_v = PATTERNS[row][1]
        mine = rows == row
        assert (mine & keep_a & keep_v).sum() == 1, row  # the row itself, both modalities
        assert (mine & keep_a & ~keep_v).sum() == want_a and (mine & ~keep_a & keep_v).sum() == want_v, row
    per_pattern = sum(a + v for _, (a, v), _ in PATTERNS)
    assert n % len(PATTERNS) == 0 and len(rows) == n + per_pattern * n // len(PATTERNS)
    assert not (~keep_a & ~keep_v).any()


def test_modality_valuation_adds_rows_on_the_modality_with_the_larger_gap():
    # every row (1, 1, 0): phi_a = 1.5, phi_v = 0.5, gap_a = -0.5, gap_v = 0.5: d = 2/3, visual alone
    ctx, model, n = _fixed_values("modality-valuation", [(1, 1, 0)])
    ctx.epoch = 1
    rows, keep_a, keep_v = _planned(ctx.method.epoch_plan(model, ctx))
    added = int(2 / 3 * n)
    assert len(rows) == n + added
    assert ((~keep_a) & keep_v).sum() == added and (keep_a & keep_v).sum() == n
    assert torch.bincount(rows, minlength=n)[:n].min() >= 1  # every row at least once
    ctx, model, n = _fixed_values("modality-valuation", [(1, 0, 1)], alpha=0.5)  # the mirror image, half as many
    ctx.epoch = 1
    rows, keep_a, keep_v = _planned(ctx.method.epoch_plan(model, ctx))
    assert (keep_a & ~keep_v).sum() == int(1 / 3 * n) and len(rows) == n + int(1 / 3 * n)


def test_the_values_come_from_the_fused_head_with_one_modalitys_features_zeroed():
    cfg = tiny_config("sample-valuation")
    dataset, splits, ctx, model, _ = training_setup(cfg)
    seen = {}

    def infer(model_, split, forward, augment):
        seen["augment"] = augment
        batch = dataset.transform(next(split.batches(16)), False, None)
        out = forward(batch)
        f_a, f_v = model.audio_encoder(batch.audio), model.visual_encoder(batch.visual)
        torch.testing.assert_close(out.logits, model(batch.audio, batch.visual).logits)
        torch.testing.assert_close(out.logits_a, model.fusion(f_a, torch.zeros_like(f_v)).logits)
        torch.testing.assert_close(out.logits_v, model.fusion(torch.zeros_like(f_a), f_v).logits)
        seen["checked"] = True
        n = len(split)
        return {k: torch.zeros(n, ctx.num_classes) for k in ("logits", "logits_a", "logits_v")}

    ctx.infer = infer
    model.eval()
    with torch.no_grad():
        ctx.method.value(model, ctx)
    assert seen == {"augment": True, "checked": True}  # valued on the training augmentation, as released


def test_an_unknown_share_function_fails_in_one_line():
    from mmbench.config import ConfigError

    with pytest.raises(ConfigError, match="func='cubic' is not allowed; choices: linear, square, tanh"):
        tiny_config("modality-valuation", func="cubic")


@pytest.mark.parametrize("method", ["sample-valuation", "modality-valuation"])
def test_valuation_resumes_after_a_kill_identical(method, tmp_path):
    assert_resumes_identical(method, tmp_path, epochs=3, stop_after=1, warmup=1)


@pytest.mark.parametrize("seed", [0])
def test_sample_valuation_lifts_the_slow_modality_on_the_imbalanced_dataset(synthetic_run, seed):
    """On `synthetic` visual alone is wrong on most rows at first, so from epoch 5 on the copies trained on one
    modality alone add about as many rows as the split has, fewer as visual learns: the visual head leaves chance
    (benchmarks/imbalance_effect.py, 5 seeds: +31.4 pp visual, +7.7 pp fused, -6.9 pp audio against joint;
    modality-valuation: +14.7 pp visual, +3.0 pp fused)."""
    run = synthetic_run("sample-valuation", seed)
    joint = synthetic_run("joint", seed)
    assert run["final_acc_head_v"] > joint["final_acc_head_v"] + 0.1
    epochs = read_epochs(synthetic_run.out).set_index("run_id").loc[[run["run_id"]]]
    added = epochs["diag_valuation_added"]
    assert added.iloc[:5].isna().all() and added.iloc[5] > 0.5  # warm-up, then about one copy per row
    assert added.iloc[-1] < added.iloc[5] / 2

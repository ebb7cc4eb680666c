"""Contract pieces for methods with their own training schemes: extra optimisers the engine checkpoints,
resetting an optimiser's state for some parameters, and planned epochs with per-row modality masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import PlannedBatch, plan_batches
from mmbench.method import Method, reset_optimizer_state
from mmbench.registry import METHODS

from .conftest import assert_resumes_identical, step_counter, tiny_config


class _AuxiliaryHead(Method):
    """joint training, and an audio head on detached features trained by its own Adam."""

    name = "aux-adam"

    def build(self, model, ctx):
        model.aux = nn.Linear(model.audio_encoder.out_dim, ctx.num_classes)
        return model

    def parameters(self, model, ctx):
        return [p for n, p in model.named_parameters() if not n.startswith("aux.")]

    def extra_optimizers(self, model, ctx):
        self.aux_optimizer = torch.optim.Adam(model.aux.parameters(), lr=1e-2)
        return {"aux": self.aux_optimizer}

    def predict(self, model, batch, ctx):  # the auxiliary head's logits stand for audio's (rho reads them)
        out = model(batch.audio, batch.visual)
        out.logits_a = model.aux(out.feat_a)
        return out

    def train_step(self, model, batch, optimizer, ctx):
        out, loss = super().train_step(model, batch, optimizer, ctx)
        self.aux_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model.aux(out.feat_a.detach()), batch.y).backward()
        self.aux_optimizer.step()
        return out, loss


def test_an_extra_optimisers_state_survives_an_interruption(tmp_path, monkeypatch):
    """Adam's moments of the auxiliary head are checkpointed: a run cut after epoch 1 and resumed ends as the
    uninterrupted run (without them, the resumed Adam would restart its moments and the head would differ)."""
    monkeypatch.setitem(METHODS._items, "aux-adam", _AuxiliaryHead)
    assert_resumes_identical("aux-adam", tmp_path)  # compares final_rho, which reads the auxiliary head


def test_reset_optimizer_state_makes_the_next_step_a_first_step():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    for _ in range(2):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        optimizer.step()
    reset_optimizer_state(optimizer, [a])
    assert a not in optimizer.state and b in optimizer.state
    before_a, before_b = a.detach().clone(), b.detach().clone()
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    optimizer.step()
    torch.testing.assert_close(a.detach(), before_a - 0.1)  # a fresh buffer: the plain gradient
    torch.testing.assert_close(b.detach(), before_b - 0.1 * (1 + 0.9 * 1.9))  # buffer 1.9 after two steps


class _PlannedCopies(Method):
    """joint training on a planned epoch: every row twice, the second copy without its visual features."""

    name = "planned-copies"

    def epoch_plan(self, model, ctx):
        n, generator = len(ctx.train), ctx.generator("method")
        rows, keep_v = torch.arange(n).repeat(2), torch.arange(2 * n) < n
        order = torch.randperm(2 * n, generator=generator, device=generator.device).cpu()
        self.planned = plan_batches(rows[order], ctx.cfg.batch_size, keep_v=keep_v[order])
        self.seen = []
        return self.planned

    def train_step(self, model, batch, optimizer, ctx):
        out, loss = super().train_step(model, batch, optimizer, ctx)
        self.seen.append((batch.index.clone(), batch.keep_v.clone(), out.feat_v.detach().clone(), ctx.steps_per_epoch))
        return out, loss


def test_a_planned_epoch_trains_its_rows_in_order_with_the_removed_features_zeroed(tmp_path, monkeypatch):
    from mmbench.train import engine

    monkeypatch.setitem(METHODS._items, "planned-copies", _PlannedCopies)
    captured = {}
    original = _PlannedCopies.epoch_plan

    def spy(self, model, ctx):
        captured["method"] = self
        return original(self, model, ctx)

    monkeypatch.setattr(_PlannedCopies, "epoch_plan", spy)
    counter = step_counter()
    row = engine.run(tiny_config("planned-copies", epochs=1), tmp_path, counter)
    method = captured["method"]
    n = row["n_train"]
    assert len(method.planned) == math.ceil(2 * n / 32) == counter.count  # the plan's steps, not ceil(n / 32)
    assert [s[3] for s in method.seen] == [len(method.planned)] * len(method.planned)
    for step, (index, keep_v, feat_v, _) in zip(method.planned, method.seen, strict=True):
        assert torch.equal(index, step.rows) and torch.equal(keep_v, step.keep_v)
        assert torch.all(feat_v[~keep_v] == 0)  # zeroed after the encoder
        assert torch.all(feat_v[keep_v].abs().sum(dim=1) > 0)


def test_a_planned_epoch_resumes_identical(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._items, "planned-copies", _PlannedCopies)
    assert_resumes_identical("planned-copies", tmp_path)


def test_plan_batches_cuts_rows_and_masks_in_order():
    rows, keep = torch.tensor([4, 1, 1, 0, 3]), torch.tensor([True, False, True, True, False])
    plan = plan_batches(rows, 2, keep_a=keep)
    assert [p.rows.tolist() for p in plan] == [[4, 1], [1, 0], [3]]
    assert [p.keep_a.tolist() for p in plan] == [[True, False], [True, True], [False]]
    assert all(p.keep_v is None for p in plan)


@pytest.mark.parametrize("step, message", [
    (PlannedBatch(torch.tensor([0, 240])), r"rows must lie in \[0, 240\)"),
    (PlannedBatch(torch.tensor([], dtype=torch.long)), "rows must be a non-empty 1-D integer"),
    (PlannedBatch(torch.tensor([0, 1]), keep_a=torch.tensor([True])), "keep_a must be a bool tensor with one value"),
    (PlannedBatch(torch.tensor([0, 1]), keep_v=torch.tensor([1, 0])), "keep_v must be a bool tensor"),
])
def test_a_malformed_plan_is_refused_naming_the_method_and_step(step, message):
    from mmbench.train.engine import check_plan

    with pytest.raises(ValueError, match=f"method m: epoch_plan step 2: {message}"):
        check_plan([PlannedBatch(torch.tensor([0])), step], 240, "m")


def test_keep_masks_need_named_encoders():
    from mmbench.config import ConfigError
    from mmbench.train.engine import FeatureMasks

    with pytest.raises(ConfigError, match="method m: .* no `audio_encoder`"):
        FeatureMasks(nn.Linear(2, 2), "m")

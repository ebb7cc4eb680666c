"""Contract pieces for methods with their own training schemes: extra optimisers the engine checkpoints, and
resetting an optimiser's state for some parameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.method import Method, reset_optimizer_state
from mmbench.registry import METHODS

from .conftest import assert_resumes_identical


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

"""Host reads in the training step (issue 16.5). On a GPU every `.item()`, `float(t)`, `if t`, `.tolist()`
or `.cpu()` waits for the device; the engine keeps the epoch's sums on the device and reads them once
per epoch. The counter below counts those calls on the CPU, where they are cheap but the same calls."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from mmbench.registry import METHODS
from mmbench.train import engine

from .conftest import step_counter, tiny_config, training_setup

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class HostReads:
    """Counts the tensor-to-host reads made while it is active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count, self.active, self.where = 0, True, []
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        @functools.wraps(original)
        def read(tensor, *args, **kwargs):
            if self.active:
                self.count += 1
                self.where.append(name)
            return original(tensor, *args, **kwargs)
        return read

    @contextlib.contextmanager
    def paused(self):
        self.active = False
        try:
            yield
        finally:
            self.active = True


def _epoch_reads(method_name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, list[str]]:
    """(host reads, steps, what was read) in the second training epoch (past every method's warm-up on
    this config), the epoch-end read of its sums excluded."""
    cfg = tiny_config(method_name, **({"modality": "audio"} if method_name == "unimodal" else {}))
    dataset, splits, ctx, model, optimizer = training_setup(cfg)
    method = ctx.method
    ctx.epoch = 1
    method.on_epoch_start(model, ctx)
    reads = HostReads(monkeypatch)
    for name in ("raise_if_not_finite", "read"):  # once per FINITE_CHECK_EVERY steps / per epoch
        original = getattr(engine._EpochStats, name)

        def excluded(self, *args, _original=original, **kwargs):
            with reads.paused():
                return _original(self, *args, **kwargs)
        monkeypatch.setattr(engine._EpochStats, name, excluded)
    steps = step_counter()
    engine.train_epoch(model, method, dataset, splits.train, optimizer, ctx, steps)
    assert steps.count == -(-len(splits.train) // cfg.batch_size) > 1  # a whole epoch was trained
    return reads.count, steps.count, reads.where



@pytest.mark.parametrize("method", [m for m in METHODS.names() if METHODS.get(m).trains])
def test_a_training_step_reads_nothing_from_the_device(method, monkeypatch):
    count, steps, where = _epoch_reads(method, monkeypatch)
    assert count == 0, f"{method}: {count} host reads in {steps} steps ({sorted(set(where))})"


def test_the_engine_itself_reads_nothing_per_step(monkeypatch):
    """joint adds nothing to the step: every read left would be the engine's (there were 2 a step: the
    loss for the finiteness check and the progress bar, and the correct count)."""
    count, _, where = _epoch_reads("joint", monkeypatch)
    assert count == 0, where


def test_a_non_finite_loss_is_still_caught_with_its_step(monkeypatch, tmp_path):
    """The check reads a device flag every FINITE_CHECK_EVERY steps and at the end of the epoch, and
    names the step where the loss first stopped being finite."""
    cfg = tiny_config("joint")
    monkeypatch.setattr(engine, "FINITE_CHECK_EVERY", 3)
    real = engine.Method.loss

    def diverging(self, out, batch, ctx):
        loss = real(self, out, batch, ctx)
        return loss * float("nan") if ctx.step == 4 else loss

    monkeypatch.setattr(engine.Method, "loss", diverging)
    with pytest.raises(engine.NonFiniteLoss, match=r"non-finite loss \(nan\) at epoch 1 step 5"):
        engine.run(cfg, tmp_path)

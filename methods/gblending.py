"""`gblending`: gradient blending (Wang, Tran, Feiszli, CVPR 2020), online, as BalanceBenchmark implements it.

The loss weights the three heads' cross-entropies, L = w_a CE(z_a) + w_v CE(z_v) + w_out CE(z), with z_a, z_v the
concat head's per-modality slices and z the fused logits. At every epoch e with e % super_epoch == 0 the weights
are estimated afresh: for each head k, a copy of the current model (with a fresh optimiser of the run's kind and
initial learning rate) trains `super_epoch` epochs with CE on the fused logits, for k = audio or visual with the
other modality's input zeroed. Its training loss (during the epoch) and its held-out loss (after the epoch, in
eval mode) after the first and the last of those epochs give
    G = L^V_last - L^V_first,   O = (L^V_last - L^T_last) - (L^V_first - L^T_first),   w_k = |G / O^2|,
then w_k / sum w. The held-out rows are a fixed `holdout` share of the training split, drawn once per seed, and
the copies train on the rest; the run itself trains on the whole training split.

As BalanceBenchmark (`balancemm/trainer/GBlending_trainer.py` lines 92-95: the estimate every super_epoch epochs;
306-376: the copies, the optimiser reset to its initial state, the zeroed input, the losses and the weights;
292-303: the weighted loss). The paper's authors released no code. Departures: BalanceBenchmark's held-out loss is
the test split's (here a held-out part of the training split, as in the paper: never the test split), and its
losses are sums over batches (`losses=sum` reproduces that; the default `mean` is the paper's average loss, so
that the training and held-out parts' sizes do not weigh O). Costs 3 x super_epoch extra epochs per estimate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import ConfigError, RunConfig
from mmbench.method import Batch, Method, Outputs, RunContext, derive_seed
from mmbench.registry import register_method
from mmbench.train.engine import build_optimizer

HEADS = ("audio", "visual", "output")


def blending_weight(train_first: float, held_out_first: float, train_last: float, held_out_last: float) -> float:
    """|G / O^2| from the copy's training and held-out losses after its first and last epochs."""
    generalisation = held_out_last - held_out_first
    overfitting = (held_out_last - train_last) - (held_out_first - train_first)
    return abs(generalisation / overfitting**2)


def zero_other_modality(batch: Batch, head: str) -> Batch:
    """The batch with the other modality's input zeroed (head audio or visual), or as it is (output)."""
    if head == "audio":
        return dataclasses.replace(batch, visual=torch.zeros_like(batch.visual))
    if head == "visual":
        return dataclasses.replace(batch, audio=torch.zeros_like(batch.audio))
    return batch


@register_method
class GBlending(Method):
    name = "gblending"
    version = 1
    description = ("Gradient blending: the fused and per-modality heads' CE losses weighted by each head's "
                   "generalisation over overfitting squared, |G / O^2|, estimated every super_epoch epochs by "
                   "training copies of the model on part of the training split and scoring them on the held-out "
                   "rest (BalanceBenchmark's online version; departure: never the test split). About 4x joint's "
                   "cost with the defaults.")
    citation = "Wang, Tran, Feiszli. What Makes Training Multi-modal Classification Networks Hard? CVPR 2020"
    hparams = {"super_epoch": 10, "holdout": 0.2, "losses": "mean"}
    choices = {"losses": ("mean", "sum")}
    help = {
        "super_epoch": "epochs between estimates, and epochs each copy trains (>= 2)",
        "holdout": "share of the training split held out for the copies' held-out loss",
        "losses": "mean: average losses over batches (the paper); sum: summed over batches (BalanceBenchmark)",
    }
    fusions = ("concat", "sum")

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        hp = cfg.hparams
        if hp["super_epoch"] < 2:
            raise ConfigError(f"gblending: super_epoch={hp['super_epoch']} leaves no first and last epoch to compare;"
                              " use --set super_epoch=2 or more")
        if not 0 < hp["holdout"] < 1:
            raise ConfigError(f"gblending: holdout={hp['holdout']} must lie strictly between 0 and 1")

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.weights = {head: 1.0 / len(HEADS) for head in HEADS}

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        if ctx.epoch % self.hp["super_epoch"] == 0:
            raw = {head: blending_weight(*self.copy_losses(model, head, ctx)) for head in HEADS}
            total = sum(raw.values())
            self.weights = {head: w / total for head, w in raw.items()}
        ctx.log(**{f"gblending_w_{head}": w for head, w in self.weights.items()})

    def held_out_rows(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(fit rows, held-out rows) of the training split, the same for every estimate of the seed."""
        n = len(ctx.train)
        g = torch.Generator().manual_seed(derive_seed(ctx.cfg.seed, "gblending holdout"))
        order = torch.randperm(n, generator=g)
        held = max(1, round(self.hp["holdout"] * n))
        return order[held:], order[:held]

    def copy_losses(self, model: nn.Module, head: str, ctx: RunContext) -> tuple[float, float, float, float]:
        """Train a copy of `model` for super_epoch epochs for `head`; its (training, held-out) losses after the
        first and the last epoch. The model itself is the copy: its state is put back afterwards."""
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        was_training = model.training
        optimizer, _ = build_optimizer(model.parameters(), ctx.cfg)
        fit_rows, held_rows = self.held_out_rows(ctx)
        fit, held = ctx.train.subset(fit_rows), ctx.train.subset(held_rows)
        reduce = torch.mean if self.hp["losses"] == "mean" else torch.sum
        g = ctx.generator("method")
        losses = []
        for epoch in range(self.hp["super_epoch"]):
            model.train()
            order = torch.randperm(len(fit), generator=g, device=g.device).cpu()
            train_losses = []
            for batch in ctx.batches(fit.subset(order), ctx.cfg.batch_size, augment=True):
                optimizer.zero_grad(set_to_none=True)
                batch = zero_other_modality(batch, head)
                with ctx.autocast():
                    loss = F.cross_entropy(model(batch.audio, batch.visual).logits, batch.y)
                loss.backward()
                optimizer.step()
                train_losses.append(loss.detach())
            if epoch in (0, self.hp["super_epoch"] - 1):
                model.eval()
                with torch.no_grad(), ctx.autocast():
                    held_batches = (zero_other_modality(b, head) for b in ctx.batches(held))
                    held_losses = [F.cross_entropy(model(b.audio, b.visual).logits.float(), b.y) for b in held_batches]
                losses.append(torch.stack([reduce(torch.stack(train_losses)), reduce(torch.stack(held_losses))]))
        model.load_state_dict(saved)
        model.train(was_training)
        (train_first, held_first), (train_last, held_last) = torch.stack(losses).double().tolist()
        return train_first, held_first, train_last, held_last

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        w = self.weights
        return (w["audio"] * F.cross_entropy(out.logits_a, y) + w["visual"] * F.cross_entropy(out.logits_v, y)
                + w["output"] * F.cross_entropy(out.logits, y))

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.weights = dict(state["weights"])

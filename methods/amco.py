"""`amco`: adaptive mask co-optimisation (Zhou et al., 2023, as BalanceBenchmark cites it), as BalanceBenchmark
implements it.

No official code was found; this follows BalanceBenchmark's `balancemm/trainer/AMCo_trainer.py` and
`BaseClassifierAMCoModel` in `balancemm/models/avclassify_model.py` (@4c1482f). The concat head's slices
z_m = f_m W_m^T + b/2 of a modality flagged "dependent" are multiplied by a class mask; their sum goes through
an extra linear layer, out = linear_star(z_a + z_v) (model lines 326-350, 365-373). Per batch, in the
modulation epochs (trainer lines 61-99, 125-155):
  1. the mask: p_t = sin(pi/2 min(eps, l_t) / eps), N = int(p_t C) classes at random positions set to 0; then
     l_t += epoch / 10 (l_t starts at 0 every epoch, so nothing is masked in epoch 0, and from epoch 1 on N
     reaches C within a few batches: the dependent modality's slice is then zeroed);
  2. L = CE(out) + sum_m CE(z_m) (z_m as masked);
  3. the flags for the next batch: softmax over the 2C concatenated slices, share_m = its block's probability
     mass averaged over the batch, dependent_m = share_m > sigma (reset at the start of every epoch).
Outside the modulation epochs: CE(out), no mask. As released, predictions are z_a + z_v, without linear_star
(the model's `validation_step` recomputes the output from the slices, lines 303-322 and 352-373); set
`predict_linear_star` to predict with out. Departure: the release expands the mask to shape (2, C) for a
two-GPU DataParallel scatter (trainer line 82), which fails on one device; here it is one (C,) mask for the
batch, as two GPUs see it. The mask positions are drawn from the run's "method" stream (the release: numpy's
global generator).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs, init_linear


def masked_classes(l_t: float, eps: float, num_classes: int) -> int:
    """N: how many classes the mask zeroes at schedule position l_t (trainer lines 73-74)."""
    return int(math.sin(math.pi / 2 * (min(eps, l_t) / eps)) * num_classes)


def dependent_flags(logits_a: torch.Tensor, logits_v: torch.Tensor, sigma: float) -> torch.Tensor:
    """(2,) bools: whether each modality's block holds more than `sigma` of the softmax over the 2C
    concatenated slices, averaged over the batch (trainer lines 146-155); on the device."""
    probs = F.softmax(torch.cat([logits_a, logits_v], dim=1), dim=1)
    shares = probs.view(len(probs), 2, -1).sum(dim=2).mean(dim=0)
    return shares > sigma


class MaskedSliceModel(nn.Module):
    """The concat model whose (optionally masked) slices are summed and mapped by linear_star."""

    def __init__(self, model: AVModel, num_classes: int, linear_init: str) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder, self.fusion = model.audio_encoder, model.visual_encoder, model.fusion
        self.linear_star = init_linear(nn.Linear(num_classes, num_classes), linear_init)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, mask_a: torch.Tensor | None = None,
                mask_v: torch.Tensor | None = None) -> Outputs:
        out = self.fusion(self.audio_encoder(audio), self.visual_encoder(visual))
        logits_a = out.logits_a if mask_a is None else out.logits_a * mask_a
        logits_v = out.logits_v if mask_v is None else out.logits_v * mask_v
        return Outputs(self.linear_star(logits_a + logits_v), logits_a, logits_v, out.feat_a, out.feat_v)


@register_method
class AMCo(Method):
    name = "amco"
    version = 1
    description = ("Adaptive mask co-optimisation: the slice of the modality that dominates the softmax is masked "
                   "class-wise (fully, after a few batches of each epoch), the slices' sum goes through an extra "
                   "linear layer, and each slice gets its own CE (BalanceBenchmark's implementation; no official "
                   "code; departure: one mask for the batch where the release's only runs on two GPUs).")
    citation = "Zhou et al. Adaptive Mask Co-Optimization for Modal Dependence in Multimodal Learning. ICASSP 2023"
    hparams = {"sigma": 0.5, "eps": 0.3, "modulation_starts": 0, "modulation_ends": 80, "predict_linear_star": False}
    help = {
        "sigma": "a modality is dependent when its share of the 2C-way softmax exceeds sigma",
        "eps": "the mask schedule reaches all classes when l_t (epoch / 10 per batch) reaches eps",
        "modulation_starts": "first epoch (from 0) with masks and per-slice losses",
        "modulation_ends": "last epoch (inclusive) with them",
        "predict_linear_star": "predict with linear_star(z_a + z_v) instead of z_a + z_v (as released)",
    }
    fusions = ("concat",)

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.l_t = 0.0
        self.dependent: torch.Tensor | None = None

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return MaskedSliceModel(model, ctx.num_classes, ctx.cfg.linear_init)

    def modulating(self, ctx: RunContext) -> bool:
        return self.hp["modulation_starts"] <= ctx.epoch <= self.hp["modulation_ends"]

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        self.l_t, self.dependent = 0.0, None

    def forward(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        if not self.modulating(ctx):
            return model(batch.audio, batch.visual)
        masked = masked_classes(self.l_t, self.hp["eps"], ctx.num_classes)
        self.l_t += ctx.epoch / 10
        generator = ctx.generator("method")
        positions = torch.randperm(ctx.num_classes, generator=generator, device=generator.device)[:masked]
        mask = torch.ones(ctx.num_classes, device=generator.device).index_fill_(0, positions, 0.0)
        if self.dependent is None:
            return model(batch.audio, batch.visual)
        mask = mask.to(batch.audio.device)
        ones = torch.ones_like(mask)
        return model(batch.audio, batch.visual, torch.where(self.dependent[0], mask, ones),
                     torch.where(self.dependent[1], mask, ones))

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        loss = F.cross_entropy(out.logits, y)
        if not self.modulating(ctx):
            return loss
        self.dependent = dependent_flags(out.logits_a.detach().float(), out.logits_v.detach().float(),
                                         self.hp["sigma"])
        ctx.log(amco_dependent_audio=self.dependent[0].float(), amco_dependent_visual=self.dependent[1].float())
        return loss + F.cross_entropy(out.logits_a, y) + F.cross_entropy(out.logits_v, y)

    def predict(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        out = model(batch.audio, batch.visual)
        if self.hp["predict_linear_star"]:
            return out
        return Outputs(out.logits_a + out.logits_v, out.logits_a, out.logits_v, out.feat_a, out.feat_v)

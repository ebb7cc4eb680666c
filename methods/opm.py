"""`opm`: on-the-fly prediction modulation (Wei, Hu, Du, Wen, TPAMI 2024).

In the forward pass, the dominant modality's features are dropped per sample with a
probability that grows with the batch's score ratio, so the fused prediction must lean on
the weak modality. Per batch, after a warm-up:
  r_m = tanh(relu(s_m / s_other - 1)),  q_m = clip(q_base * (1 + lam * r_m), 0, 1) if r_m > 0 else 0
  with probability p_exe: mask_m ~ Bernoulli(1 - q_m) per sample, features * mask_m / (1 - theta),
  theta = sum_m d_m q_m / sum_m d_m; samples with every modality dropped leave the loss.
Inference never drops.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.methods.ogm import JOURNAL_RECIPE
from mmbench.metrics import modality_scores
from mmbench.models import Outputs
from mmbench.registry import register_method


def drop_probabilities(score_a: float, score_v: float, q_base: float, lam: float) -> tuple[float, float]:
    """(q_a, q_v): non-zero only for the modality whose score exceeds the other's."""
    if score_a == 0 and score_v == 0:
        return 0.0, 0.0
    probabilities = []
    for mine, other in ((score_a, score_v), (score_v, score_a)):
        ratio = mine / other if other > 0 else math.inf
        r = math.tanh(max(ratio - 1.0, 0.0))
        probabilities.append(min(max(q_base * (1 + lam * r), 0.0), 1.0) if r > 0 else 0.0)
    return probabilities[0], probabilities[1]


def drop_features(feat_a: torch.Tensor, feat_v: torch.Tensor, mask_a: torch.Tensor, mask_v: torch.Tensor,
                  q_a: float, q_v: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked features rescaled by 1 / (1 - theta), and the samples that keep any modality."""
    dim_a, dim_v = feat_a.shape[1], feat_v.shape[1]
    theta = (dim_a * q_a + dim_v * q_v) / (dim_a + dim_v)
    if theta >= 1:
        raise ValueError(f"drop probabilities q_a={q_a}, q_v={q_v} would drop every feature")
    scale = 1.0 / (1.0 - theta)
    keep = mask_a | mask_v
    dropped_a = feat_a * mask_a[:, None].to(feat_a.dtype) * scale
    dropped_v = feat_v * mask_v[:, None].to(feat_v.dtype) * scale
    return dropped_a[keep], dropped_v[keep], keep


@register_method
class OPM(Method):
    name = "opm"
    description = "On-the-fly prediction modulation: drop the dominant modality's features per sample."
    citation = "Wei, Hu, Du, Wen. On-the-fly Modulation for Balanced Multimodal Learning. " \
               "TPAMI 2024, arXiv 2410.11582"
    hparams = {"q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "warmup_epochs": 6}
    help = {
        "q_base": "base drop probability of the dominant modality",
        "lam": "growth of the drop probability with the score discrepancy (lambda)",
        "p_exe": "probability that a batch is modulated at all",
        "warmup_epochs": "epochs of plain joint training first (journal code: epochs 0..5)",
    }
    # synthetic trains 12 epochs, not 100: the 6-epoch warm-up scaled to the same share.
    dataset_hparams = {"synthetic": {"warmup_epochs": 1}}
    fusions = ("concat", "sum")
    profiles = {"official": JOURNAL_RECIPE}

    def forward(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        feat_a, feat_v = model.encode(batch.audio, batch.visual)
        out = model.fusion(feat_a, feat_v)
        if ctx.epoch < self.hp["warmup_epochs"]:
            return out
        score_a, score_v = modality_scores(out.logits_a, out.logits_v, batch.y)
        q_a, q_v = drop_probabilities(score_a, score_v, self.hp["q_base"], self.hp["lam"])
        generator = ctx.generator("method")
        executed = torch.rand((), generator=generator, device=generator.device).item() < self.hp["p_exe"]
        ctx.log(q_a=q_a, q_v=q_v, executed=float(executed))
        if not executed or (q_a == 0 and q_v == 0):
            ctx.log(dropped_a=0.0, dropped_v=0.0)
            return out
        n = len(batch)
        mask_a = torch.rand(n, generator=generator, device=generator.device) >= q_a
        mask_v = torch.rand(n, generator=generator, device=generator.device) >= q_v
        ctx.log(dropped_a=1 - mask_a.float().mean().item(), dropped_v=1 - mask_v.float().mean().item())
        dropped_a, dropped_v, keep = drop_features(feat_a, feat_v, mask_a.to(feat_a.device),
                                                   mask_v.to(feat_a.device), q_a, q_v)
        modulated = model.fusion(dropped_a, dropped_v)
        modulated.keep = keep
        return modulated

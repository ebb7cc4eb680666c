"""`ume`: uni-modal ensemble (Du et al., ICML 2023).

The prediction of the `unimodal` runs of the same seed and settings, one per modality (which `mmbench run`
and `sweep` train first, or reuse; loaded with the weights they selected, best on validation): the mean of
their logits, or of their softmax probabilities. UME trains nothing itself; its cost is that of its two
unimodal runs. There is no official code (nor one in BalanceBenchmark); the paper's text was not available
here, so `combine` says which mean is used.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs


class Ensemble(nn.Module):
    """The two unimodal models side by side; the prediction is the mean of their logits or probabilities."""

    def __init__(self, model_a: nn.Module, model_v: nn.Module, combine: str) -> None:
        super().__init__()
        self.model_a, self.model_v, self.combine = model_a, model_v, combine

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        out_a, out_v = self.model_a(audio, visual), self.model_v(audio, visual)
        z_a, z_v = out_a.logits, out_v.logits
        if self.combine == "probs":
            # the log of the mean probability: its argmax and softmax are the mean probabilities'
            fused = torch.log((z_a.softmax(1) + z_v.softmax(1)) / 2)
        else:
            fused = (z_a + z_v) / 2
        return Outputs(fused, z_a, z_v, out_a.feat_a, out_v.feat_v)


@register_method
class UME(Method):
    name = "ume"
    version = 1
    description = ("Uni-modal ensemble: predicts with the mean of the finished unimodal runs of the same seed "
                   "(trained first); no training of its own, its cost is theirs (no official code).")
    citation = "Du et al. On Uni-Modal Feature Learning in Supervised Multi-Modal Learning. ICML 2023, " \
               "arXiv 2305.01233"
    hparams = {"combine": "logits"}
    choices = {"combine": ("logits", "probs")}
    help = {"combine": "average the unimodal models' logits, or their softmax probabilities"}
    requires = {"teacher_a": {"method": "unimodal", "modality": "audio"},
                "teacher_v": {"method": "unimodal", "modality": "visual"}}
    trains = False
    modality_logits = "separate-learner"

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return Ensemble(ctx.load_run("teacher_a"), ctx.load_run("teacher_v"), self.hp["combine"])

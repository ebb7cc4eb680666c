"""`opm`: on-the-fly prediction modulation (Wei, Hu, Du, Wen, TPAMI 2024).

In the forward pass, the dominant modality's features are dropped per sample with a
probability that grows with the batch's score ratio, so the fused prediction must lean on
the weak modality. Per batch, after a warm-up:
  r_m = tanh(relu(s_m / s_other - 1)),  q_m = clip(q_base * (1 + lam * r_m), 0, 1) if r_m > 0 else 0
  with probability p_exe: mask_m ~ Bernoulli(1 - q_m) per sample, features * mask_m / (1 - theta),
  theta = sum_m d_m q_m / sum_m d_m. The journal code also removes the samples that lose every modality
  from the loss; under this rule only the dominant modality has q > 0, so none ever does, and mmbench
  keeps every sample (removing them would read the device each step).
Inference never drops. Scores come from the fusion head's per-modality logits (W_m f_m + b/2), as
the journal code's detached copy of the fusion weights.

`theta_grad` (the official code's backward): the released `custom_autograd.backward` returns theta
itself as theta's gradient (`code/models/Classifier.py` ~16-21). Theta depends on q, q on the
scores, and the scores on the *un-detached* features through the detached fusion weights
(~112-147), so on every executed drop both encoders receive an extra gradient theta * dtheta/dparams
(3.6-4.7 % of the encoder gradient norm). `none` (benchmark default, the paper's rescaling only);
`official` (`--profile official`) reproduces it, as the gradient of theta_sg * theta (theta_sg: theta
without gradient) added to the loss with value 0. The released file also has a stray `]`
(line ~53) and does not parse as published; nothing here depends on that line.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.methods.ogm import JOURNAL_RECIPE
from mmbench.registry import register_method
from mmbench.train.metrics import true_class_score
from mmbench.train.models import Outputs


def drop_probability_tensor(score_a: torch.Tensor, score_v: torch.Tensor, q_base: float,
                            lam: float) -> torch.Tensor:
    """[q_a, q_v] as a differentiable function of the scores (`calcu_q`, Classifier.py ~58-72):
    r_m = tanh(relu(s_m / s_other - 1)), q_m = q_base (1 + lam r_m) where r_m > 0, else 0, clipped
    to [0, 1]. Both scores zero give 0/0 = nan, so r > 0 fails and nothing is dropped."""
    r = torch.tanh(torch.relu(torch.stack([score_a / score_v, score_v / score_a]) - 1))
    return torch.where(r > 0, q_base * (1 + lam * r), torch.zeros_like(r)).clamp(0.0, 1.0)


def detached_head_scores(fusion: nn.Module, feat_a: torch.Tensor, feat_v: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_a, s_v): summed true-class probabilities of each modality's logits through a detached copy
    of the fusion weights, so the scores carry gradient to the features only (as the journal code)."""
    detached = {name: p.detach() for name, p in fusion.named_parameters()}
    out = functional_call(fusion, detached, (feat_a, feat_v))
    return true_class_score(out.logits_a, y), true_class_score(out.logits_v, y)


def drop_features(feat_a: torch.Tensor, feat_v: torch.Tensor, mask_a: torch.Tensor, mask_v: torch.Tensor,
                  q_a: torch.Tensor | float, q_v: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked features rescaled by 1 / (1 - theta), theta = (d_a q_a + d_v q_v) / (d_a + d_v) in float64
    as the code's Python floats. theta < 1: only one q is ever non-zero (drop_probability_tensor)."""
    dim_a, dim_v = feat_a.shape[1], feat_v.shape[1]
    q_a, q_v = torch.as_tensor(q_a).double(), torch.as_tensor(q_v).double()
    scale = 1.0 / (1.0 - (dim_a * q_a + dim_v * q_v) / (dim_a + dim_v))
    return (feat_a * mask_a[:, None].to(feat_a.dtype) * scale.to(feat_a.device),
            feat_v * mask_v[:, None].to(feat_v.dtype) * scale.to(feat_v.device))


@register_method
class OPM(Method):
    name = "opm"
    description = ("On-the-fly prediction modulation: drop the dominant modality's features per sample "
                   "(theta_grad=official adds the released backward's extra encoder gradient).")
    citation = "Wei, Hu, Du, Wen. On-the-fly Modulation for Balanced Multimodal Learning. " \
               "TPAMI 2024, arXiv 2410.11582"
    # 3: every modulated batch draws its masks (also when not executed), so that no step reads the device
    version = 3
    hparams = {"q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "warmup_epochs": 6, "theta_grad": "none"}
    choices = {"theta_grad": ("none", "official")}
    help = {
        "q_base": "base drop probability of the dominant modality",
        "lam": "growth of the drop probability with the score discrepancy (lambda)",
        "p_exe": "probability that a batch is modulated at all",
        "warmup_epochs": "epochs of plain joint training first (journal code: epochs 0..5)",
        "theta_grad": "none: only the 1/(1-theta) rescaling; official: also the released backward's extra "
                      "encoder gradient theta * dtheta/dparams",
    }
    # synthetic trains 12 epochs, not 100: the 6-epoch warm-up scaled to the same share.
    dataset_hparams = {"synthetic": {"warmup_epochs": 1}}
    fusions = ("concat", "sum")
    profiles = {"official": {d: {**recipe, "theta_grad": "official"} for d, recipe in JOURNAL_RECIPE.items()}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.theta: torch.Tensor | None = None  # this batch's differentiable theta (theta_grad=official)

    def forward(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        self.theta = None
        feat_a, feat_v = model.encode(batch.audio, batch.visual)
        if ctx.epoch < self.hp["warmup_epochs"]:
            return model.fusion(feat_a, feat_v)
        official = self.hp["theta_grad"] == "official"
        with torch.set_grad_enabled(official and torch.is_grad_enabled()):
            scores = detached_head_scores(model.fusion, feat_a, feat_v, batch.y)
            q = drop_probability_tensor(*scores, self.hp["q_base"], self.hp["lam"])
        # Everything stays on the device: a batch that is not executed draws its masks too and drops
        # with q = 0 (all kept, scale 1), which equals the un-modulated forward.
        generator = ctx.generator("method")
        executed = torch.rand((), generator=generator, device=generator.device) < self.hp["p_exe"]
        q_drop = torch.where(executed.to(q.device), q.detach(), torch.zeros_like(q))
        n = len(batch)
        mask_a, mask_v = ((torch.rand(n, generator=generator, device=generator.device) >= q_m).to(feat_a.device)
                          for q_m in q_drop.to(generator.device))
        ctx.log(q_a=q[0].detach(), q_v=q[1].detach(), executed=executed.float(),
                dropped_a=1 - mask_a.float().mean(), dropped_v=1 - mask_v.float().mean())  # read at epoch end
        dropped_a, dropped_v = drop_features(feat_a, feat_v, mask_a, mask_v, q_drop[0], q_drop[1])
        if official:
            dim_a, dim_v = feat_a.shape[1], feat_v.shape[1]
            self.theta = (dim_a * q[0] + dim_v * q[1]) / (dim_a + dim_v) * executed.to(q.dtype)
        return model.fusion(dropped_a, dropped_v)

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        loss = super().loss(out, batch, ctx)
        if self.theta is None:
            return loss
        theta_sg = self.theta.detach()
        return loss + theta_sg * (self.theta - theta_sg)  # value +0, gradient theta * dtheta/dparams

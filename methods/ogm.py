"""On-the-fly gradient modulation: `ogm-ge` (CVPR 2022) and `ogm` (the TPAMI 2024 journal rule).

After backward, the batch's true-class scores s_a, s_v (from each modality's half of the
fusion head) say which modality dominates; its encoder gradients are scaled by
k = 1 - tanh(alpha * rho), rho = s_dominant / s_weak (the official code's form, without the
paper's rho - 1). OGM-GE then adds Gaussian noise N(0, std(g)^2) to both encoders'
gradients (generalisation enhancement). The journal rule adds a warm-up and, by default,
no noise (its released script adds it: `--profile official` sets ge=true). Scores come from
detached logits, as the journal code's detached fusion weights. At an exact tie s_a = s_v the
CVPR rule slows audio and the journal rule visual, as each code does. With sum fusion the scores
use each head's full bias in training (the CVPR code's train loop).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.methods.joint import OGM_GE_RECIPE
from mmbench.registry import register_method
from mmbench.train.metrics import true_class_score
from mmbench.train.models import Outputs

_JOURNAL = {"optimizer": "adamw", "weight_decay": 0.01, "lr_gamma": 0.1, "epochs": 100, "batch_size": 32,
            "fusion": "concat"}
#: The TPAMI 2024 code's recipe (OGM and OPM): KS from the released scripts, CREMA-D from the
#: maintainer (BML_TPAMI2024 issue #3).
JOURNAL_RECIPE = {
    "cremad": {**_JOURNAL, "lr": 1e-3, "lr_step": 20, "frames": 1, "image_size": 224},
    "kinetics-sounds": {**_JOURNAL, "lr": 5e-5, "lr_step": 40, "frames": 3, "image_size": 112},
}


def modulation_coefficients(score_a: torch.Tensor | float, score_v: torch.Tensor | float, alpha: float,
                            tie_slows: str = "audio") -> tuple[torch.Tensor, torch.Tensor]:
    """(k_a, k_v) as float64 tensors on the scores' device, computed there (no host read): only the
    dominant modality is slowed, k = 1 - tanh(alpha * rho). At an exact tie each code's `else` branch
    decides: the CVPR code (`main.py` ~119-124, `ratio_v > 1` else audio) slows audio, the journal code
    (`code/main.py` ~138-148, `radio_1 > 1` else visual) slows visual. With both scores 0 nothing is
    known and nothing is slowed. float64 as the official code's Python floats; a zero score gives an
    infinite ratio and k = 0, as there."""
    a = torch.as_tensor(score_a).double()
    v = torch.as_tensor(score_v).double().to(a.device)
    tie = a == v
    nothing = tie & (a == 0)
    slows_a = ((a > v) | (tie & (tie_slows == "audio"))) & ~nothing
    slows_v = ((v > a) | (tie & (tie_slows != "audio"))) & ~nothing
    one = torch.ones((), dtype=torch.float64, device=a.device)
    return (torch.where(slows_a, 1.0 - torch.tanh(alpha * (a / v)), one),
            torch.where(slows_v, 1.0 - torch.tanh(alpha * (v / a)), one))


def modulated_parameters(encoder: nn.Module, scope: str) -> list[nn.Parameter]:
    """conv: 4-D kernels only (official code); all: every weight with 2 or more dimensions
    (BalanceBenchmark; differs only for encoders with linear layers). Never BN or biases."""
    min_dim = 4 if scope == "conv" else 2
    return [p for p in encoder.parameters() if p.grad is not None and p.grad.dim() >= min_dim]


def modulate_gradients(params: list[nn.Parameter], k: torch.Tensor | float, generator: torch.Generator | None) -> None:
    """g <- k * g, plus N(0, (std(g) + 1e-8)^2) noise of the un-modulated g when a generator is given
    (`main.py` ~130-140: `grad * coeff + zeros_like(grad).normal_(0, grad.std().item() + 1e-8)`). The std
    stays on the device; the noise is scaled, then added, as normal_ does."""
    for p in params:
        std = p.grad.std().double() + 1e-8 if generator is not None else None
        p.grad.mul_(k)
        if std is not None:
            noise = torch.randn(p.grad.shape, generator=generator, device=p.grad.device, dtype=p.grad.dtype)
            p.grad.add_(noise.mul_(std))


@register_method
class OGMGE(Method):
    name = "ogm-ge"
    # 2: the GE noise is scaled by its std on the device, then added (as normal_), not added with the std as
    # a host float (a fused multiply-add): the last bit of some gradients changed
    version = 2
    description = "On-the-fly gradient modulation with generalisation enhancement (gradient noise)."
    citation = "Peng, Wei, Deng, Wang, Hu. Balanced Multimodal Learning via On-the-fly Gradient " \
               "Modulation. CVPR 2022, arXiv 2203.15332"
    hparams = {"alpha": 0.1, "modulation_starts": 0, "modulation_ends": 50, "warmup_epochs": 0,
               "modulate": "conv", "ge": True}
    choices = {"modulate": ("conv", "all")}
    help = {
        "alpha": "strength: k = 1 - tanh(alpha * rho) on the dominant modality",
        "modulation_starts": "first epoch with modulation",
        "modulation_ends": "last epoch with modulation (inclusive)",
        "warmup_epochs": "epochs of plain joint training before any modulation",
        "modulate": "conv: conv kernels (official); all: every multi-dimensional encoder weight",
        "ge": "add the generalisation-enhancement gradient noise to both encoders",
    }
    # README: 0.8 for CREMA-D (0.1 is the default command's value); the journal code uses 0.8 on KS.
    dataset_hparams = {"cremad": {"alpha": 0.8}, "kinetics-sounds": {"alpha": 0.8}}
    fusions = ("concat", "sum")
    profiles = {"official": OGM_GE_RECIPE}
    # Its GE noise spreads the seeds: 6 CI seeds caught a 2 pp drop in 83 % of simulated CI runs with 11
    # methods under Holm's correction; 8 keep it clear of 80 % as methods are added.
    check_suite = {"ci_seeds": 8}
    #: Which modality an exact tie s_a = s_v slows (each official code's `else` branch).
    tie_slows = "audio"

    def active(self, epoch: int) -> bool:
        hp = self.hp
        return epoch >= hp["warmup_epochs"] and hp["modulation_starts"] <= epoch <= hp["modulation_ends"]

    def after_backward(self, model: nn.Module, out: Outputs, batch: Batch, ctx: RunContext) -> None:
        y = out.targets(batch.y)
        score_a, score_v = (true_class_score(logits.detach(), y).double() for logits in (out.logits_a, out.logits_v))
        k_a, k_v = modulation_coefficients(score_a, score_v, self.hp["alpha"], self.tie_slows)
        active = self.active(ctx.epoch)
        rho = torch.where(score_v == 0, math.inf, score_a / score_v)
        ctx.log(rho=rho, k_a=k_a, k_v=k_v, modulated=float(active))
        if not active:
            return
        noise = ctx.generator("method") if self.hp["ge"] else None
        for encoder, k in ((model.audio_encoder, k_a), (model.visual_encoder, k_v)):
            modulate_gradients(modulated_parameters(encoder, self.hp["modulate"]), k, noise)


@register_method
class OGM(OGMGE):
    name = "ogm"
    version = 2
    description = ("On-the-fly gradient modulation, journal rule: warm-up, detached scores, no noise by default "
                   "(the released script adds GE noise: --profile official sets ge=true).")
    citation = "Wei, Hu, Du, Wen. On-the-fly Modulation for Balanced Multimodal Learning. " \
               "TPAMI 2024, arXiv 2410.11582"
    # Script values of the journal code (train_ogm.sh): alpha 0.8, modulation epochs 0-60, warm-up
    # epochs 0..5. The released script runs with GE noise (`--modulation` defaults to OGM_GE,
    # code/main.py ~36, and train_ogm.sh does not override it; so does the maintainer's CREMA-D
    # recipe): `--profile official` sets ge=true. The benchmark keeps ge=false so that `ogm` is the
    # journal paper's OGM rule on its own and `ogm-ge` the noisy variant, each measurable apart.
    hparams = {**OGMGE.hparams, "alpha": 0.8, "modulation_ends": 60, "warmup_epochs": 6, "ge": False}
    dataset_hparams = {
        "cremad": {"alpha": 2.6, "modulation_ends": 80},  # maintainer, BML_TPAMI2024 issue #3
        "kinetics-sounds": {"alpha": 0.8, "modulation_ends": 60},
        # synthetic trains 12 epochs, not 100: the 6-epoch warm-up scaled to the same share.
        "synthetic": {"warmup_epochs": 1},
    }
    profiles = {"official": {d: {**recipe, "ge": True} for d, recipe in JOURNAL_RECIPE.items()}}
    check_suite: dict = {}  # no noise by default: N_CI seeds suffice
    tie_slows = "visual"

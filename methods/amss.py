"""`amss`: adaptively masked subnetworks, AMSS and AMSS+ (Yang, Pan, Jiang, Xu, Tang, TPAMI 2025).

After the plain cross-entropy's backward, each encoder updates only some output channels of its convolutions:
the stronger modality fewer. Per step, from the concat head's slices z_m and the features f_m:
  pi = the batch's label histogram (over labels 0..max label in the batch), HY = -sum pi log softmax(pi),
  s_m = -CE(z_m, y),  H_m = mean_i entropy(softmax(f_m,i)) (over the feature dimensions),
  r_m = (s_m + HY + 0.5) / H_m,  coeff_a = exp(r_v / T) / (exp(r_v / T) + exp(r_a / T)),  coeff_v = 1 - coeff_a,
each clamped to [0.1, 0.9] (0.5 each if either numerator is <= 0). For every convolution of encoder m but the
stem and the 1x1 shortcuts, with g_c the summed squared gradient of output channel c and pi_c = g_c / sum g,
ceil(C_out coeff_m) channels are drawn without replacement with probabilities pi; their gradients are kept
(AMSS), or scaled by 1 / (pi_c + 1 / C_out) (AMSS+, `unbiased=true`), the others zeroed.

As the official code (njustkmg/TPAMI-AMSS @3161ecc, `AMSS/train_test.py`): lines 38-97 (the coefficients),
107-127 (the slices), 146-190 (the step), 243-308 (the masks; the README's `--sample_mode=Adaptive`,
`gn_mode` gn). The head mask the code computes with `--mask_ffn=1` (lines 193-241) is never applied, so it is
not computed here. Departures: the draw without replacement is the Gumbel-top-k form of `torch.multinomial`'s
(the same distribution, another random stream), so that the number of channels stays on the device; in
mmbench's small CNN "the residual convolutions" are every convolution after the first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import Outputs

_SCRIPT = {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 60, "lr_gamma": 0.1,
           "epochs": 80, "batch_size": 64, "fusion": "concat", "image_size": 224}
#: The README's commands (lr 0.01, `--patience=60` = StepLR(60, 0.1), 80 epochs) on `train_test.py`'s defaults
#: (SGD momentum 0.9, weight decay 1e-4, batch 64, lines 438-440, 627); 1 frame for CREMA-D, 3 for
#: Kinetics-Sounds (lines 527-534); CREMA-D audio as OGM-GE's (`AMSS/MyDataset.py` lines 214-219).
OFFICIAL = {"cremad": {**_SCRIPT, "frames": 1}, "kinetics-sounds": {**_SCRIPT, "frames": 3}}


def mask_coefficients(logits_a: torch.Tensor, logits_v: torch.Tensor, feat_a: torch.Tensor, feat_v: torch.Tensor,
                      y: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
    """(coeff_a, coeff_v): the share of channels each encoder updates (`train_test.py` lines 38-97)."""
    counts = torch.bincount(y, minlength=num_classes).float()
    in_histogram = torch.arange(num_classes, device=y.device) <= y.max()  # bincount's length: max label + 1
    label_probs = counts / len(y)
    log_softmax = label_probs - torch.logsumexp(label_probs.masked_fill(~in_histogram, -math.inf), dim=0)
    hy = -(label_probs * log_softmax).sum()
    scores = torch.stack([-F.cross_entropy(z, y) for z in (logits_a, logits_v)]) + hy + 0.5
    entropies = torch.stack([torch.special.entr(F.softmax(f, dim=1)).sum(dim=1).mean() for f in (feat_a, feat_v)])
    shares = channel_shares(scores / entropies, temperature)
    return torch.where((scores <= 0).any(), torch.full_like(scores, 0.5), shares)


def channel_shares(ratios: torch.Tensor, temperature: float) -> torch.Tensor:
    """(coeff_a, coeff_v) from (r_a, r_v): exp(r_v/T) / (exp(r_v/T) + exp(r_a/T)) for audio, clamped to
    [0.1, 0.9], NaN -> 0.5 (lines 55-56, 80-88)."""
    coeff_a = torch.softmax(ratios.flip(0) / temperature, dim=0)[0]
    return torch.stack([coeff_a, 1 - coeff_a]).nan_to_num(0.5).clamp(0.1, 0.9)


def channel_mask(grad: torch.Tensor, coeff: torch.Tensor, generator: torch.Generator, unbiased: bool) -> torch.Tensor:
    """Per output channel of a conv weight's gradient: ceil(C_out coeff) channels drawn without replacement with
    probabilities g_c / sum g (g_c the channel's summed squared gradient), as 1 (or 1 / (pi_c + 1 / C_out))."""
    g = grad.float().pow(2).sum(dim=(1, 2, 3))
    probs = g / g.sum()
    channels = len(probs)
    keep = torch.ceil(channels * coeff)
    uniform = torch.rand(channels, generator=generator, device=generator.device).to(grad.device)
    keys = probs.log() - torch.log(-torch.log(uniform.clamp(min=1e-12)))  # Gumbel-top-k: sampling w/o replacement
    rank = torch.argsort(torch.argsort(keys, descending=True))
    chosen = (rank < keep).float()
    return chosen / (probs + 1 / channels) if unbiased else chosen


def masked_convolutions(encoder: nn.Module) -> list[nn.Conv2d]:
    """The convolutions whose channels are masked: all but the stem and the 1x1 shortcuts."""
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    return [conv for conv in convs[1:] if conv.kernel_size != (1, 1)]


@register_method
class AMSS(Method):
    name = "amss"
    version = 1
    description = ("Adaptively masked subnetworks: each encoder's conv gradients are kept on a sample of output "
                   "channels drawn by gradient importance, fewer for the stronger modality (unbiased=true: AMSS+, "
                   "importance-weighted; departure: the draw is the Gumbel-top-k form of the same distribution).")
    citation = "Yang, Pan, Jiang, Xu, Tang. Learning to Rebalance Multi-Modal Optimization by Adaptively Masking " \
               "Subnetworks. IEEE TPAMI 47(6), 2025, arXiv 2404.08347"
    hparams = {"temperature": 0.2, "unbiased": False}
    help = {
        "temperature": "T of the softmax that turns the modalities' ratios into channel shares",
        "unbiased": "AMSS+: scale the kept channels' gradients by 1 / (pi_c + 1 / C_out) (`--isbias=1`)",
    }
    fusions = ("concat",)
    profiles = {"official": OFFICIAL}

    def after_backward(self, model: nn.Module, out: Outputs, batch: Batch, ctx: RunContext) -> None:
        y = out.targets(batch.y)
        coeffs = mask_coefficients(out.logits_a.detach().float(), out.logits_v.detach().float(),
                                   out.feat_a.detach().float(), out.feat_v.detach().float(), y, ctx.num_classes,
                                   self.hp["temperature"])
        generator = ctx.generator("method")
        for coeff, encoder in zip(coeffs, (model.audio_encoder, model.visual_encoder), strict=True):
            for conv in masked_convolutions(encoder):
                if conv.weight.grad is not None:
                    mask = channel_mask(conv.weight.grad, coeff, generator, self.hp["unbiased"])
                    conv.weight.grad.mul_(mask[:, None, None, None].to(conv.weight.grad.dtype))
        ctx.log(amss_coeff_a=coeffs[0], amss_coeff_v=coeffs[1])

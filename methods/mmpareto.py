"""`mmpareto`: Pareto integration of the multimodal and unimodal gradients (Wei, Hu, ICML 2024).

The model adds a linear head per modality beside the fused concat head. Each step computes, for each
encoder m, the gradient of the multimodal loss g_mm = grad CE(z) and of its own unimodal loss
g_uni = grad CE(h_m) (one forward, three backward passes). If the two agree (cosine over the whole
encoder > 0) the weights are (k0, k1) = (1/2, 1/2); otherwise the min-norm point of the two, k0 = c,
k1 = 1 - c with c = (<g_uni,g_uni> - <g_mm,g_uni>) / ||g_mm - g_uni||^2. A fourth backward of
L = CE(z) + CE(h_a) + CE(h_v) gives g_sum; then every parameter tensor of encoder m takes
  g <- gamma * max(1, ||g_sum|| / ||g_new||) * g_new,   g_new = 2 k0 g_mm + 2 k1 g_uni,
(the direction of the Pareto point at the larger of the two magnitudes, boosted by gamma = 1.5); the heads
keep g_sum. With agreeing gradients that is 1.5 g_sum.

As the official code (GeWu-Lab/MMPareto_ICML2024 @a339db3): `code/MMPareto.py` lines 74-83 (the encoder
parameters: names with audio/visual and without head), 97-147 (losses and the three gradients), 149-174 (the
cosines and the weights), 178-207 (the sum's backward and the per-tensor rescale), `code/min_norm_solvers.py`
lines 9-30 (the closed form for two vectors, with its 0.999 and 0.001 edge cases), `code/models/models.py`
lines 151-184 (the separate heads). `heads=slice` trains the unimodal losses on the concat head's slices
instead, the loss set of BalanceBenchmark's version (whose missing zero_grad is not reproduced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import RunConfig
from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs

#: `MMPareto.py` defaults (lines 28-33, 296-301) and `script/mmpareto.sh`: SGD lr 2e-3, momentum 0.9, weight
#: decay 1e-4, 50 epochs, batch 64; the StepLR(30) is built but never stepped, so the lr stays constant. The
#: model is not re-initialised (PyTorch's default Linear init); classes in sorted order and Kaldi fbank audio
#: (`dataset/av_dataset.py` lines 52, 73), 2 frames (line 92). No Kinetics-Sounds script.
OFFICIAL_CREMAD = {"optimizer": "sgd", "lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 1000,
                   "epochs": 50, "batch_size": 64, "fusion": "concat", "linear_init": "pytorch", "frames": 2,
                   "image_size": 224, "class_order": "sorted", "audio_frontend": "fbank"}


def pareto_weights(g_mm: torch.Tensor, g_uni: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k0, k1) for two flat gradients: (1/2, 1/2) when their cosine is positive, else the min-norm
    point of the segment between them (`min_norm_solvers.py` lines 9-30), on the device."""
    v11, v12, v22 = g_mm @ g_mm, g_mm @ g_uni, g_uni @ g_uni
    c = (v22 - v12) / (v11 + v22 - 2 * v12)
    c = torch.where(v12 >= v11, 0.999, torch.where(v12 >= v22, 0.001, c))
    agree = F.cosine_similarity(g_mm, g_uni, dim=0) > 0
    k0 = torch.where(agree, 0.5, c)
    return k0, 1 - k0


def pareto_gradient(g_mm: torch.Tensor, g_uni: torch.Tensor, g_sum: torch.Tensor, k0: torch.Tensor,
                    k1: torch.Tensor, gamma: float) -> torch.Tensor:
    """One parameter tensor's new gradient (`MMPareto.py` lines 186-207)."""
    new = 2 * k0 * g_mm + 2 * k1 * g_uni
    scale = g_sum.norm() / new.norm()
    return gamma * torch.where(scale > 1, scale, 1.0) * new


class WithUnimodalHeads(nn.Module):
    """The audio-visual model and a linear head per modality (`models.py` lines 151-184)."""

    def __init__(self, model: AVModel, num_classes: int) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder, self.fusion = model.audio_encoder, model.visual_encoder, model.fusion
        self.head_a = nn.Linear(model.audio_encoder.out_dim, num_classes)
        self.head_v = nn.Linear(model.visual_encoder.out_dim, num_classes)

    def encode(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_encoder(audio), self.visual_encoder(visual)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        feat_a, feat_v = self.encode(audio, visual)
        fused = self.fusion(feat_a, feat_v)
        return Outputs(fused.logits, self.head_a(feat_a), self.head_v(feat_v), feat_a, feat_v)


@register_method
class MMPareto(Method):
    name = "mmpareto"
    version = 1
    description = ("Pareto integration: each encoder steps along the min-norm combination of its multimodal "
                   "and unimodal gradients when they conflict, at the magnitude of the summed loss's, times 1.5; "
                   "separate unimodal heads (4 backward passes per step).")
    citation = "Wei, Hu. MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance. ICML 2024, " \
               "arXiv 2405.17730"
    hparams = {"gamma": 1.5, "heads": "separate"}
    choices = {"heads": ("separate", "slice")}
    help = {
        "gamma": "magnitude boost of the encoders' gradients (hard-coded 1.5 in the release)",
        "heads": "separate = a linear head per modality, as released; slice = the concat head's per-modality "
                 "slices (BalanceBenchmark's loss set)",
    }
    fusions = ("concat",)
    modality_logits = "auxiliary-head"  # with heads=separate, the default (logits_kind)
    profiles = {"official": {"cremad": OFFICIAL_CREMAD}}

    @classmethod
    def logits_kind(cls, cfg: RunConfig) -> str:
        return "fusion-slice" if cfg.hparams.get("heads") == "slice" else cls.modality_logits

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return WithUnimodalHeads(model, ctx.num_classes) if self.hp["heads"] == "separate" else model

    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = self.forward(model, batch, ctx)
            y = out.targets(batch.y)
            loss_mm, loss_a, loss_v = (F.cross_entropy(z, y) for z in (out.logits, out.logits_a, out.logits_v))
        encoders = {"a": list(model.audio_encoder.parameters()), "v": list(model.visual_encoder.parameters())}
        both = torch.autograd.grad(loss_mm, encoders["a"] + encoders["v"], retain_graph=True)
        g_mm = {"a": both[: len(encoders["a"])], "v": both[len(encoders["a"]):]}
        g_uni = {m: torch.autograd.grad(loss, encoders[m], retain_graph=True)
                 for m, loss in (("a", loss_a), ("v", loss_v))}
        loss = loss_mm + loss_a + loss_v
        loss.backward()
        for m, params in encoders.items():
            k0, k1 = pareto_weights(_flat(g_mm[m]), _flat(g_uni[m]))
            ctx.log(**{f"pareto_k_uni_{m}": k1})
            for param, mm, uni in zip(params, g_mm[m], g_uni[m], strict=True):
                param.grad = pareto_gradient(mm, uni, param.grad, k0, k1, self.hp["gamma"])
        optimizer.step()
        return out, loss


def _flat(grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads]).float()

"""`inforeg`: information acquisition regulation (Huang, Wei, Yang, Hu, CVPR 2025).

The loss is CE(z) + CE(z_a) + CE(z_v) on the concat head and its per-modality slices. While audio is still
acquiring information (its "prime learning window"), the batch's dominant modality is pulled back towards
its weights at the start of the epoch: with s_m the batch sum of the true-class probabilities of z_m,
  s_a > s_v:  grad(theta_a) += beta_a (theta_a - theta_a~),  beta_a = 0.95 exp(tanh(s_a - s_v)),
  s_v > s_a:  grad(theta_v) += beta_v (theta_v - theta_v~),  beta_v = 0.10 exp(tanh(s_v - s_a)),
(theta~ the epoch-start weights) when the window gate k > 0.05, where k compares the audio encoder's
Fisher trace T (the sum over its conv layers of the epoch's mean squared weight gradients) of the last ten
epochs with the ten before: k = (mean T[-10:] - mean T[-11:-1]) / mean T[-10:], the history starting as ten
zeros, and k = 1 in the first epoch.

As the official code (GeWu-Lab/InfoReg_CVPR2025 @939b2ed): `main.py` lines 236-243 (the gate), 259 (the
epoch-start copy), 361-363 (the slices), 456-458 (the three losses' backward), 460-485 (the scores and the
betas), 489-495 (the proximal term on every encoder parameter), 501-523 (the Fisher accumulated after it),
564-595 (the traces), 693-694 (the history's ten zeros). The release also backpropagates each loss once more
to log the gradients (lines 401-453); those passes change nothing and are not run here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.metrics import true_class_score
from mmbench.train.models import Outputs

#: `main.py` defaults (lines 34-45, 714-715): SGD lr 2e-3, momentum 0.9, weight decay 1e-4, StepLR(30, 0.1)
#: after each epoch, 50 epochs, batch 64, concat; 3 frames drawn per clip (`dataset/CramedDataset.py`, from a
#: 3-fps frame folder); OGM-GE's 3-s STFT audio. The Kinetics-Sounds loader is another (`KSDataset.py`).
OFFICIAL_CREMAD = {"optimizer": "sgd", "lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 30,
                   "lr_gamma": 0.1, "epochs": 50, "batch_size": 64, "fusion": "concat", "frames": 3,
                   "image_size": 224}


def regulation_strengths(score_a: torch.Tensor, score_v: torch.Tensor, in_window: bool, beta_audio: float,
                         beta_visual: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta_a, beta_v): only the batch-dominant modality's is non-zero, and only in the window (lines 465-485)."""
    gap = torch.tanh(score_a - score_v)
    beta_a = torch.where(score_a > score_v, beta_audio * torch.exp(gap), 0.0)
    beta_v = torch.where(score_v > score_a, beta_visual * torch.exp(-gap), 0.0)
    return (beta_a, beta_v) if in_window else (torch.zeros_like(beta_a), torch.zeros_like(beta_v))


def window_gate(traces: list[float], window: int) -> float:
    """k = (mean of the last `window` traces - mean of the `window` before the last) / the former (lines 236-243)."""
    recent = sum(traces[-window:]) / window
    before = sum(traces[-window - 1:-1]) / window
    return (recent - before) / recent if recent else 0.0  # no gradient for ten epochs: nothing to acquire


@register_method
class InfoReg(Method):
    name = "inforeg"
    version = 1
    description = ("Information acquisition regulation: CE on the fused logits and both slices; while the audio "
                   "encoder's Fisher trace still grows (the window gate), the batch-dominant encoder is pulled "
                   "back to its epoch-start weights by a proximal term.")
    citation = "Huang, Wei, Yang, Hu. Adaptive Unimodal Regulation for Balanced Multimodal Information " \
               "Acquisition. CVPR 2025, arXiv 2503.18595"
    hparams = {"beta_audio": 0.95, "beta_visual": 0.10, "gate": 0.05, "window": 10}
    help = {
        "beta_audio": "proximal strength on the audio encoder when audio dominates the batch (times exp tanh gap)",
        "beta_visual": "the same for the visual encoder when visual dominates",
        "gate": "regulate only while the audio window gate k exceeds this",
        "window": "epochs averaged on each side of the gate's comparison of Fisher traces",
    }
    fusions = ("concat",)
    profiles = {"official": {"cremad": OFFICIAL_CREMAD}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.traces = [0.0] * self.hp["window"]  # the audio encoder's Fisher trace per epoch (lines 693-694)
        self.in_window = True
        self.anchors: dict[str, list[torch.Tensor]] = {}
        self.fisher: list[torch.Tensor] = []

    @staticmethod
    def _convs(model: nn.Module) -> list[nn.Module]:
        return [m for m in model.audio_encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        k = 1.0 if ctx.epoch == 0 else window_gate(self.traces, self.hp["window"])
        self.in_window = k > self.hp["gate"]
        self.anchors = {m: [p.detach().clone() for p in encoder.parameters()]
                        for m, encoder in (("a", model.audio_encoder), ("v", model.visual_encoder))}
        self.fisher = [torch.zeros_like(conv.weight) for conv in self._convs(model)]
        ctx.log(inforeg_window_gate=k)

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        return F.cross_entropy(out.logits, y) + F.cross_entropy(out.logits_a, y) + F.cross_entropy(out.logits_v, y)

    def after_backward(self, model: nn.Module, out: Outputs, batch: Batch, ctx: RunContext) -> None:
        y = out.targets(batch.y)
        scores = [true_class_score(z.detach().float(), y) for z in (out.logits_a, out.logits_v)]
        betas = regulation_strengths(*scores, self.in_window, self.hp["beta_audio"], self.hp["beta_visual"])
        for beta, (m, encoder) in zip(betas, (("a", model.audio_encoder), ("v", model.visual_encoder)), strict=True):
            for param, anchor in zip(encoder.parameters(), self.anchors[m], strict=True):
                if param.grad is not None:
                    param.grad.add_(beta * (param.detach() - anchor))
        for fisher, conv in zip(self.fisher, self._convs(model), strict=True):
            fisher.add_(conv.weight.grad.float() ** 2)
        ctx.log(inforeg_beta_a=betas[0], inforeg_beta_v=betas[1])

    def on_epoch_end(self, model: nn.Module, ctx: RunContext) -> None:
        trace = torch.stack([f.mean() for f in self.fisher]).sum() if self.fisher else torch.zeros(())
        self.traces.append(float(trace))  # the one host read of the epoch

    def diagnostics(self) -> dict[str, float]:
        return {"inforeg_audio_fisher_trace": self.traces[-1]}

    def state_dict(self) -> dict[str, Any]:
        return {"traces": list(self.traces)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.traces = list(state["traces"])

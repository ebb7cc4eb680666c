"""`unimodal`: one encoder and a linear head on a single modality (the reference point)."""

from __future__ import annotations

import torch
from torch import nn

from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs, init_linear


class UnimodalModel(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, modality: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)
        self.modality = modality

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        feat = self.encoder(audio if self.modality == "audio" else visual)
        logits = self.head(feat)
        if self.modality == "audio":
            return Outputs(logits, logits_a=logits, feat_a=feat)
        return Outputs(logits, logits_v=logits, feat_v=feat)


@register_method
class Unimodal(Method):
    name = "unimodal"
    description = "One modality only: its encoder plus a linear classifier (--set modality=audio|visual)."
    citation = "Unimodal baseline (e.g. Peng et al., CVPR 2022; Jiang et al., NeurIPS 2025)"
    hparams = {"modality": "audio"}
    choices = {"modality": ("audio", "visual")}
    help = {"modality": "the modality to train on"}
    reference = True
    modality_logits = "single-modality"

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        # The encoder is the one joint training starts from with the same seed (paired init).
        encoder = model.audio_encoder if self.hp["modality"] == "audio" else model.visual_encoder
        model = UnimodalModel(encoder, ctx.num_classes, self.hp["modality"])
        init_linear(model.head, ctx.cfg.linear_init)
        return model

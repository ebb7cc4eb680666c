"""`remix`: data remixing (Ma, Chen, Deng, ICML 2025).

The concat head z and a separate head per modality, h_a = head_a(f_a) and h_v = head_v(f_v). Warm-up
epochs (e < warmup) train joint with the heads: L = CE(z) + alpha CE(h_a) + beta CE(h_v). Every later epoch
first remixes the training split: each row's heads, in eval mode with the evaluation transform, give
KL_m = sum_c p_m,c log2(p_m,c C) (the prediction's divergence from uniform, p clipped at 1e-9), and the row
goes to the audio set when KL_a < KL_v (audio is the less sure: it trains on that row alone), else to the
video set. The epoch is then all video-set batches with the audio features zeroed, L = CE(z) + gamma1 CE(h_v),
then all audio-set batches with the visual features zeroed, L = CE(z) + gamma2 CE(h_a), each set shuffled:
every row once, by one modality, in batches of one modality (an epoch plan with keep-masks).

As the official code (MatthewMaxy/Remix_ICML2025 @80898aa): `train.py` lines 52-58 (the divergence, with C
hard-coded as 6: here the dataset's class count, the same on CREMA-D), 60-99 (the remix over the training
list with the test transform, `datasets/dataloader.py` lines 31-32), 101-125 (warm-up), 127-170 (the two
sets, video first, each in a shuffled loader), 226-252 (remix before every epoch from `warmup` on);
`models/models.py` lines 32-36 and 55-66 (the heads; the absent modality's features zeroed after the
encoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch, PlannedBatch, plan_batches
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs, init_linear

#: `scripts/run_train.sh` and `train.py`'s defaults (lines 31-48, 233-235): Adam lr 5e-5 with L2 weight
#: decay 1e-4, StepLR(30, 0.1), 60 epochs, batch 64, warm-up 10; 2 frames (`datasets/dataloader.py` line 80),
#: classes sorted (line 53), PyTorch's default init of the heads; audio spectrograms prepared as OGM-GE's
#: (the README). No Kinetics-Sounds script (the KL's hard-coded 6 classes would not run on it).
OFFICIAL_CREMAD = {"optimizer": "adam", "lr": 5e-5, "weight_decay": 1e-4, "lr_step": 30, "lr_gamma": 0.1,
                   "epochs": 60, "batch_size": 64, "fusion": "concat", "linear_init": "pytorch", "frames": 2,
                   "image_size": 224, "class_order": "sorted", "audio_frontend": "ogm-stft"}


def divergence_from_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Per row: sum_c p_c log2(p_c C), p = softmax clipped at 1e-9 (lines 52-58)."""
    p = F.softmax(logits.double(), dim=1).clamp(1e-9, 1.0)
    return (p * torch.log2(p * logits.shape[1])).sum(dim=1)


class HeadsModel(nn.Module):
    """The concat model plus a linear head per modality (their logits are `logits_a`, `logits_v`)."""

    def __init__(self, model: AVModel, num_classes: int, linear_init: str) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder, self.fusion = model.audio_encoder, model.visual_encoder, model.fusion
        self.head_a = init_linear(nn.Linear(self.audio_encoder.out_dim, num_classes), linear_init)
        self.head_v = init_linear(nn.Linear(self.visual_encoder.out_dim, num_classes), linear_init)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        fused = self.fusion(self.audio_encoder(audio), self.visual_encoder(visual))
        return Outputs(fused.logits, self.head_a(fused.feat_a), self.head_v(fused.feat_v), fused.feat_a, fused.feat_v)


@register_method
class Remix(Method):
    name = "remix"
    version = 1
    description = ("Data remixing: after a warm-up, each epoch assigns every training row to the modality whose "
                   "own head is less sure of it, then trains video-set batches with audio removed and audio-set "
                   "batches with visual removed, each with its head's CE (an epoch plan).")
    citation = "Ma, Chen, Deng. Improving Multimodal Learning Balance and Sufficiency through Data Remixing. ICML 2025"
    hparams = {"warmup": 10, "alpha": 0.5, "beta": 0.5, "gamma1": 1.0, "gamma2": 1.0}
    help = {
        "warmup": "epochs of joint training with both heads' CE before remixing starts",
        "alpha": "warm-up weight of the audio head's CE",
        "beta": "warm-up weight of the visual head's CE",
        "gamma1": "weight of the visual head's CE on the video set (audio removed)",
        "gamma2": "weight of the audio head's CE on the audio set (visual removed)",
    }
    fusions = ("concat",)
    modality_logits = "auxiliary-head"
    profiles = {"official": {"cremad": OFFICIAL_CREMAD}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.video_steps = 0

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return HeadsModel(model, ctx.num_classes, ctx.cfg.linear_init)

    def remixing(self, ctx: RunContext) -> bool:
        return ctx.epoch >= self.hp["warmup"]

    def epoch_plan(self, model: nn.Module, ctx: RunContext) -> list[PlannedBatch] | None:
        if not self.remixing(ctx):
            return None
        parts = ctx.infer(model, ctx.train)
        to_audio = divergence_from_uniform(parts["logits_a"]) < divergence_from_uniform(parts["logits_v"])
        video = self._set_batches(~to_audio, ctx, keep_a=False)  # the video set first, audio removed
        self.video_steps = len(video)
        plan = video + self._set_batches(to_audio, ctx, keep_v=False)
        ctx.log(remix_audio_share=to_audio.double().mean())
        return plan

    @staticmethod
    def _set_batches(chosen: torch.Tensor, ctx: RunContext, **keep: bool) -> list[PlannedBatch]:
        """The chosen rows, shuffled (a loader with shuffle=True), in batches that all drop one modality."""
        rows = torch.nonzero(chosen).flatten()
        rows = rows[torch.randperm(len(rows), generator=ctx.generator("order"))]
        masks = {name: torch.full((len(rows),), value) for name, value in keep.items()}
        return plan_batches(rows, ctx.cfg.batch_size, **masks)

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        ce = F.cross_entropy(out.logits, y)
        if not self.remixing(ctx):
            return (ce + self.hp["alpha"] * F.cross_entropy(out.logits_a, y)
                    + self.hp["beta"] * F.cross_entropy(out.logits_v, y))
        if ctx.step < self.video_steps:  # the video set comes first (the plan)
            return ce + self.hp["gamma1"] * F.cross_entropy(out.logits_v, y)
        return ce + self.hp["gamma2"] * F.cross_entropy(out.logits_a, y)

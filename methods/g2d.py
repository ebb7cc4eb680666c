"""`g2d`: gradient-guided distillation (Rakib & Bagavathi, ICCV 2025).

The teachers are the `unimodal` runs of the same seed and settings, one per modality (an encoder and a
linear classifier, the release's `teacher.py` recipe), which `mmbench run` and `sweep` train first (or
reuse), loaded with the weights they selected on validation, in eval mode. The student has a linear head
per modality and predicts their mean, z = (W_a f_a + b_a + W_v f_v + b_v) / 2 (`fusion_method = 'late'`).
Per step:
    L = CE(z) + sum over m of [ w_logit * KL(softmax(t_m / T) || softmax(z / T)) * T^2 + w_feat * MSE(f_m, f_m^T) ]
with t_m and f_m^T teacher m's logits and features: both teachers' logits are distilled into the fused
logits. Sequential modality prioritisation: in epochs modulation_starts..modulation_ends (inclusive), the
modality whose teacher gives the batch's true classes the larger summed softmax probability has the
gradients of its encoder's convolution weights (every 4-D parameter) set to zero for that step.

As the official code (rAIson-Lab/G2D @95969d8): `student.py` lines 84-166 (the step) and 179-192 (the two
losses: `kl_div(log_softmax(z/T), softmax(t/T), 'batchmean') * T^2`, `mse_loss`), `utils/utils.py` lines
243-284 (the scores and the gate), `models/fusion_modules.py` lines 27-42 (the late fusion), `config.py`
lines 12, 35-51, 106-144 (every weight 1, T = 1, modulation epochs 0-150). Departure: where the two teacher
scores are equal the release raises ValueError; mmbench trains that step ungated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.method import AVModel, Batch, Method, Outputs, RunContext, init_linear
from mmbench.registry import register_method

_SCRIPT = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 200, "lr_gamma": 0.1,
           "epochs": 300, "batch_size": 16, "frames": 1, "image_size": 224}
#: `config.py` lines 35-51 (SGD 1e-3, momentum 0.9 at `student.py` line 249, weight decay 1e-4, StepLR(200, 0.1)
#: stepped after each epoch, 300 epochs, batch 16) and `CremadDataset.py` (one frame, 224 px, OGM-GE's STFT
#: of 3 s at 22,050 Hz). The release has no Kinetics-Sounds configuration.
OFFICIAL = {"cremad": {**_SCRIPT, "audio_frontend": "ogm-stft"}}


class LateFusionModel(nn.Module):
    """The two encoders and a linear head per modality; the fused logits are the mean of the heads'."""

    def __init__(self, model: AVModel, num_classes: int, linear_init: str) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder = model.audio_encoder, model.visual_encoder
        self.fc_a = init_linear(nn.Linear(model.audio_encoder.out_dim, num_classes), linear_init)
        self.fc_v = init_linear(nn.Linear(model.visual_encoder.out_dim, num_classes), linear_init)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        feat_a, feat_v = self.audio_encoder(audio), self.visual_encoder(visual)
        logits_a, logits_v = self.fc_a(feat_a), self.fc_v(feat_v)
        return Outputs((logits_a + logits_v) / 2, logits_a, logits_v, feat_a, feat_v)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, summed over classes, averaged over the batch."""
    return F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                    reduction="batchmean") * temperature**2


def gate(teacher_a: torch.Tensor, teacher_v: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(coeff_a, coeff_v): 0 for the modality whose teacher puts more summed softmax probability on the true
    classes, 1 for the other; 1 for both where the sums are equal. Tensors, so that nothing is read on the host."""
    score_a = teacher_a.softmax(1).gather(1, y[:, None]).sum()
    score_v = teacher_v.softmax(1).gather(1, y[:, None]).sum()
    return (score_a <= score_v).float(), (score_a >= score_v).float()


@register_method
class G2D(Method):
    name = "g2d"
    version = 1
    description = ("Gradient-guided distillation: the finished unimodal runs of the same seed (trained first) "
                   "distil their logits into the fused logits and their features into the encoders; per batch the "
                   "modality whose teacher is surer of the true classes has its encoder's convolutions frozen "
                   "(departure: a tie of the two scores trains the step ungated where the release raises).")
    citation = "Rakib, Bagavathi. G2D: Boosting Multimodal Learning via Gradient-Guided Distillation. ICCV 2025, " \
               "arXiv 2506.21514"
    hparams = {"temperature": 1.0, "logit_weight": 1.0, "feature_weight": 1.0, "modulation_starts": 0,
               "modulation_ends": 150}
    help = {
        "temperature": "distillation temperature T of the logit loss",
        "logit_weight": "weight of each teacher's logit distillation into the fused logits",
        "feature_weight": "weight of each teacher's feature distillation (MSE) into its encoder",
        "modulation_starts": "first epoch (from 0) of the sequential modality prioritisation",
        "modulation_ends": "last epoch (inclusive) of it",
    }
    profiles = {"official": OFFICIAL}
    fusions = ("concat",)  # the two heads replace the fusion layer; concat is the model they are built from
    modality_logits = "late-fusion"
    requires = {"teacher_a": {"method": "unimodal", "modality": "audio"},
                "teacher_v": {"method": "unimodal", "modality": "visual"}}

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        self.teachers = {key: ctx.load_run(key) for key in self.requires}  # not submodules: not trained or saved
        self.teacher_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        return LateFusionModel(model, ctx.num_classes, ctx.cfg.linear_init)

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        with torch.no_grad():
            teacher_a = self.teachers["teacher_a"](batch.audio, batch.visual)
            teacher_v = self.teachers["teacher_v"](batch.audio, batch.visual)
        self.teacher_logits = (teacher_a.logits, teacher_v.logits)
        temperature = self.hp["temperature"]
        logits = sum(logit_distillation(out.logits, t.logits, temperature) for t in (teacher_a, teacher_v))
        features = F.mse_loss(out.feat_a, teacher_a.feat_a) + F.mse_loss(out.feat_v, teacher_v.feat_v)
        ctx.log(g2d_logit_kd=logits.detach(), g2d_feature_kd=features.detach())
        return F.cross_entropy(out.logits, y) + self.hp["logit_weight"] * logits + self.hp["feature_weight"] * features

    def after_backward(self, model: nn.Module, out: Outputs, batch: Batch, ctx: RunContext) -> None:
        if not self.hp["modulation_starts"] <= ctx.epoch <= self.hp["modulation_ends"]:
            return
        coeff_a, coeff_v = gate(*self.teacher_logits, out.targets(batch.y))
        ctx.log(g2d_audio_frozen=1 - coeff_a, g2d_visual_frozen=1 - coeff_v)
        for encoder, coeff in ((model.audio_encoder, coeff_a), (model.visual_encoder, coeff_v)):
            grads = [p.grad for p in encoder.parameters() if p.grad is not None and p.ndim == 4]
            if grads:
                torch._foreach_mul_(grads, coeff)

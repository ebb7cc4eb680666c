"""`umt`: uni-modal teacher (Du et al., ICML 2023).

The teachers are the `unimodal` runs of the same seed and settings, one per modality, which `mmbench run`
and `sweep` train first (or reuse), loaded with the weights they selected (best on validation).

UMT distils the teachers' features into the multimodal model's encoders. Per step, in the epochs
modulation_starts..modulation_ends (inclusive):
    L = CE(z) + scaling * (MSE(f_a_teacher, f_a) + MSE(f_v_teacher, f_v))
with f_m the encoder's pooled features and MSE the mean over batch and feature dimension; the teachers run
without gradients. There is no official code; this is BalanceBenchmark's (`trainer/UMT_trainer.py` lines
129-147, its defaults scaling 10, epochs 0-80 in `configs/trainer_config.yaml` lines 62-66). Quirk behind a
flag: BalanceBenchmark never switches its teachers out of train mode, so their batch norm uses the batch's
statistics (`teachers_train_mode=true`); by default they run in eval mode, as the models they selected.
BalanceBenchmark loads a checkpoint of the newest unimodal run folder; mmbench the run of the same seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs

TEACHERS = {"teacher_a": {"method": "unimodal", "modality": "audio"},
            "teacher_v": {"method": "unimodal", "modality": "visual"}}


def distillation_loss(feat_a: torch.Tensor, feat_v: torch.Tensor, teacher_a: torch.Tensor,
                      teacher_v: torch.Tensor) -> torch.Tensor:
    """MSE(f_a^T, f_a) + MSE(f_v^T, f_v), each the mean over the batch and the feature dimension."""
    return F.mse_loss(feat_a, teacher_a) + F.mse_loss(feat_v, teacher_v)


@register_method
class UMT(Method):
    name = "umt"
    version = 1
    description = ("Uni-modal teacher: the encoders' features are pulled (MSE) to those of the finished unimodal "
                   "runs of the same seed, trained first (BalanceBenchmark's implementation; no official code; "
                   "its teachers stay in train mode: teachers_train_mode=true).")
    citation = "Du et al. On Uni-Modal Feature Learning in Supervised Multi-Modal Learning. ICML 2023, " \
               "arXiv 2305.01233"
    hparams = {"scaling": 10.0, "modulation_starts": 0, "modulation_ends": 80, "teachers_train_mode": False}
    help = {
        "scaling": "weight of the feature distillation loss",
        "modulation_starts": "first epoch (from 0) with the distillation loss",
        "modulation_ends": "last epoch (inclusive) with it",
        "teachers_train_mode": "run the teachers in train mode, batch norm on the batch's statistics (as "
                               "BalanceBenchmark does)",
    }
    requires = TEACHERS

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        # a dict, not submodules: the teachers are neither trained nor checkpointed with the student
        self.teachers = {key: ctx.load_run(key) for key in TEACHERS}
        for teacher in self.teachers.values():
            teacher.train(self.hp["teachers_train_mode"])
        return model

    def distilling(self, ctx: RunContext) -> bool:
        return self.hp["modulation_starts"] <= ctx.epoch <= self.hp["modulation_ends"]

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        loss = F.cross_entropy(out.logits, out.targets(batch.y))
        if not self.distilling(ctx):
            return loss
        with torch.no_grad():
            teacher_a = self.teachers["teacher_a"](batch.audio, batch.visual).feat_a
            teacher_v = self.teachers["teacher_v"](batch.audio, batch.visual).feat_v
        distill = distillation_loss(out.feat_a, out.feat_v, teacher_a, teacher_v)
        ctx.log(umt_distill=distill.detach())
        return loss + self.hp["scaling"] * distill

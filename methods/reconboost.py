"""`reconboost`: alternating boosting of modality learners (Hua, Xu, Bao, Yang, Huang, ICML 2024).

Each modality's learner is its encoder followed by one head shared by both learners (Linear(d, 256), ReLU,
Linear(256, C)); the ensemble predicts beta * sum of its learners' logits, beta a learnable scalar. Training runs
in stages of boost_epochs + rectify_epochs epochs; stage s trains the audio learner if s is even, else visual:
1. Boosting (boost_epochs): the learner m (its encoder and the head) on
       L = -(1/C) (w1 - w2 p_{F_-m}(y)) log p_{g_m}(y),  F_-m = beta * (the other learners' logits, no gradient)
   (before any other learner joined: p = 1, the release's constant c0 through a one-column softmax), plus for
   s > 0 the reconcilement term alpha * MSE(softmax g_m, softmax g_other).
2. The learner joins the ensemble (here from the start of its boosting phase, so that the epochs evaluated before
   its rectification see it: the release evaluates only after each stage).
3. Rectification (rectify_epochs): every joined learner's encoder, the head and beta on CE(beta * sum g_k).
Each phase starts with a fresh optimiser state (momentum buffers cleared; the run's optimiser kind and schedule).

`reconcile` chooses the reconcilement term: `released` reproduces the release, whose term takes both softmaxes
detached and so has no gradient (it is logged and its second forward of the other learner, in train mode, still
moves that learner's batch-norm statistics); `intended` lets its gradient reach g_m (the other learner's softmax
detached); `off` drops it. `init=unimodal` starts both encoders from the finished `unimodal` runs of the same
seed, both learners in the ensemble from stage 0 (the release's `--use_pretrain`, from OGM-GE checkpoints).

As the official code (huacong/ReconBoost @14ab57a): `train.py` lines 259-366 (the stages, the boosting loss at
339-340, the detached term at 344-352), 369-402 (rectification over `DynamicNet.parameters()`: the encoders, the
head, beta), 445-451 (CREMA-D: both learning rates x0.1 every 30 stages), 223-240 (batch 64, c0 = a random
float); `models/dynamic_net.py` lines 5-15 (the head), 33 (beta = `--boost_rate` 1.0), 96-135 (the masked
ensemble under no_grad); `schedule.py` lines 50-55 (audio on even stages). BalanceBenchmark's version: one
boosting and one rectification epoch per modality per epoch, a linear head (`head=linear`), beta 0.01
(`beta_init=0.01`), one AdamW never reset.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import ConfigError, RunConfig
from mmbench.method import AVModel, Batch, Method, Outputs, RunContext, init_linear, reset_optimizer_state
from mmbench.registry import register_method

MODALITIES = ("audio", "visual")
TEACHERS = {"teacher_a": {"method": "unimodal", "modality": "audio"},
            "teacher_v": {"method": "unimodal", "modality": "visual"}}

#: `train.py` defaults (lines 56-77) with the CREMA-D schedule: SGD lr 0.01 (m_lr = e_lr), momentum 0.9, weight
#: decay 5e-4, x0.1 every 30 stages of 8 epochs, batch 64, 100 stages (the released checkpoint is stage 99's);
#: one frame of 224 px, OGM-GE's STFT (`loaders/CramedDataset.py` lines 30, 59-87). No Kinetics-Sounds code.
OFFICIAL = {"cremad": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "lr_step": 240,
                       "lr_gamma": 0.1, "epochs": 800, "batch_size": 64, "frames": 1, "image_size": 224,
                       "audio_frontend": "ogm-stft"}}


def boosting_loss(logits: torch.Tensor, others: torch.Tensor | None, y: torch.Tensor, w1: float,
                  w2: float) -> torch.Tensor:
    """mean over the batch of -(1/C)(w1 - w2 p_others(y)) log p(y); `others` None: p_others(y) = 1."""
    log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    p_others = 1.0 if others is None else F.softmax(others.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    return (-(w1 - w2 * p_others) * log_p / logits.shape[1]).mean()


class BoostedEnsemble(nn.Module):
    """Two encoders and one shared head; `joined` names the learners in the ensemble (set by the method)."""

    def __init__(self, model: AVModel, num_classes: int, head: str, beta: float, linear_init: str) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder = model.audio_encoder, model.visual_encoder
        dim = model.audio_encoder.out_dim
        layers = [nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, num_classes)] if head == "mlp" else [
            nn.Linear(dim, num_classes)]
        self.head = init_linear(nn.Sequential(*layers), linear_init)
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.joined: tuple[str, ...] = ()

    def learner(self, modality: str, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of one modality's learner."""
        feat = self.audio_encoder(audio) if modality == "audio" else self.visual_encoder(visual)
        return feat, self.head(feat)

    def ensemble(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """beta * the sum of the joined learners' logits (only they run: the others get no gradient)."""
        return self.beta * sum(self.learner(m, audio, visual)[1] for m in self.joined)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        (feat_a, logits_a), (feat_v, logits_v) = (self.learner(m, audio, visual) for m in MODALITIES)
        joined = [logits for m, logits in zip(MODALITIES, (logits_a, logits_v), strict=True) if m in self.joined]
        fused = self.beta * sum(joined) if joined else torch.zeros_like(logits_a)
        return Outputs(fused, logits_a, logits_v, feat_a, feat_v)


@register_method
class ReconBoost(Method):
    name = "reconboost"
    version = 1
    description = ("Alternating boosting: stages train one modality's learner (its encoder and a shared head) on "
                   "a boosting loss that down-weights samples the other learners already get right, then "
                   "rectify the whole ensemble beta * sum g_m with CE; a fresh optimiser state per phase "
                   "(official code's schedule; reconcile=released keeps its gradient-free reconcilement term).")
    citation = ("Hua, Xu, Bao, Yang, Huang. ReconBoost: Boosting Can Achieve Modality Reconcilement. ICML 2024, "
                "arXiv 2405.09321")
    hparams = {"boost_epochs": 4, "rectify_epochs": 4, "w1": 5.0, "w2": 1.0, "alpha": 0.5,
               "reconcile": "released", "beta_init": 1.0, "head": "mlp", "init": "scratch"}
    help = {
        "boost_epochs": "epochs of each stage's boosting phase (the release's epochs_per_stage)",
        "rectify_epochs": "epochs of each stage's rectification phase (correct_epoch)",
        "w1": "weight of the learner's log-likelihood in the boosting loss",
        "w2": "weight of the same term times the other learners' probability of the label",
        "alpha": "weight of the reconcilement term",
        "reconcile": "released (no gradient, as released), intended (gradient into the learner) or off",
        "beta_init": "initial ensemble scale beta (the release's boost_rate; BalanceBenchmark: 0.01)",
        "head": "mlp (Linear-ReLU-Linear, hidden 256, as released) or linear (BalanceBenchmark)",
        "init": "scratch, or unimodal: both encoders from the finished unimodal runs, both learners joined",
    }
    choices = {"reconcile": ("released", "intended", "off"), "head": ("mlp", "linear"), "init": ("scratch", "unimodal")}
    modality_logits = "separate-learner"
    profiles = {"official": OFFICIAL}
    check_suite = {"boost_epochs": 1, "rectify_epochs": 1}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.joined: tuple[str, ...] = ()  # the learners in the ensemble, mirrored on the model

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        hp = cfg.hparams
        if hp["boost_epochs"] < 1 or hp["rectify_epochs"] < 0:
            raise ConfigError("reconboost: boost_epochs must be >= 1 and rectify_epochs >= 0")

    @classmethod
    def required_runs(cls, cfg: RunConfig) -> dict[str, dict[str, Any]]:
        return TEACHERS if cfg.hparams["init"] == "unimodal" else {}

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        if model.audio_encoder.out_dim != model.visual_encoder.out_dim:
            raise ConfigError("reconboost shares one head between the learners: the encoders' widths must match")
        ensemble = BoostedEnsemble(model, ctx.num_classes, self.hp["head"], self.hp["beta_init"], ctx.cfg.linear_init)
        if self.hp["init"] == "unimodal":
            for key, encoder in (("teacher_a", ensemble.audio_encoder), ("teacher_v", ensemble.visual_encoder)):
                encoder.load_state_dict(ctx.load_run(key).encoder.state_dict())
            self.joined = MODALITIES
        ensemble.joined = self.joined
        return ensemble

    def schedule(self, epoch: int) -> tuple[int, bool, str]:
        """(stage, boosting?, the stage's learner) of an epoch."""
        cycle = self.hp["boost_epochs"] + self.hp["rectify_epochs"]
        stage = epoch // cycle
        return stage, epoch % cycle < self.hp["boost_epochs"], MODALITIES[stage % 2]

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        stage, boosting, learner = self.schedule(ctx.epoch)
        phase_start = ctx.epoch % (self.hp["boost_epochs"] + self.hp["rectify_epochs"]) in (0, self.hp["boost_epochs"])
        if phase_start:  # a fresh optimiser per phase (train.py lines 296, 371)
            reset_optimizer_state(ctx.optimizer, model.parameters())
        if boosting and learner not in self.joined:
            self.joined = model.joined = tuple(m for m in MODALITIES if m in self.joined or m == learner)
        ctx.log(reconboost_stage=stage, reconboost_boosting_audio=float(boosting and learner == "audio"),
                reconboost_boosting_visual=float(boosting and learner == "visual"))

    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        stage, boosting, learner = self.schedule(ctx.epoch)
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            if boosting:
                out, loss = self.boost(model, batch, learner, stage, ctx)
            else:
                logits = model.ensemble(batch.audio, batch.visual)
                out, loss = Outputs(logits), F.cross_entropy(logits, batch.y)
        loss.backward()
        optimizer.step()
        ctx.log(reconboost_beta=model.beta.detach())
        return out, loss

    def boost(self, model: nn.Module, batch: Batch, learner: str, stage: int,
              ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        """The boosting loss of `learner` against the other joined learners (no gradient into them)."""
        other = MODALITIES[1 - MODALITIES.index(learner)]
        feat, logits = model.learner(learner, batch.audio, batch.visual)
        with torch.no_grad():
            others = model.beta * model.learner(other, batch.audio, batch.visual)[1] if other in model.joined else None
        loss = boosting_loss(logits, others, batch.y, self.hp["w1"], self.hp["w2"])
        if self.hp["reconcile"] != "off" and stage > 0:
            with torch.no_grad():  # the release runs the other learner again (train mode) for this term
                previous = F.softmax(model.learner(other, batch.audio, batch.visual)[1].float(), dim=1)
            mine = F.softmax(logits.float(), dim=1)
            term = F.mse_loss(mine.detach() if self.hp["reconcile"] == "released" else mine, previous)
            ctx.log(reconboost_reconcile=term.detach())
            loss = loss + self.hp["alpha"] * term
        fused = model.beta.detach() * logits.detach() + (0 if others is None else others)
        return Outputs(fused, **({"logits_a": logits} if learner == "audio" else {"logits_v": logits})), loss

    def state_dict(self) -> dict[str, Any]:
        return {"joined": list(self.joined)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.joined = model.joined = tuple(state["joined"])

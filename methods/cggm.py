"""`cggm`: classifier-guided gradient modulation (Guo, Jin, Chen, Zhao, NeurIPS 2024).

Beside the model, a classifier per modality is trained on that modality's detached features with an optimiser
of its own. Per step t:
1. L = CE(z) + lam * l_gm(t-1); backward. l_gm(t-1) is the direction term built at the previous step, so its
   gradient reaches only the fusion weights, at their step t-1 values (the classifier part is zeroed in 2).
2. The classifiers' loss sum_m CE(phi_m(f_m)), after zeroing their gradients; backward.
3. acc_m(t) = phi_m's accuracy on the batch; Delta_m = acc_m(t) - acc_m(t-1) (acc(0) = 0, carried across
   epochs); coeff_m = (sum_k Delta_k - Delta_m) / (sum_k Delta_k + 1e-8): the modality whose classifier improved
   less gets the larger coefficient.
4. cos_m = cosine between the flattened weights of phi_m's output layer and the fusion weights of modality m;
   l_gm(t) = (sum_m |coeff_m| - sum_m coeff_m cos_m) / M, kept for step t+1.
5. Each encoder's gradients times rho * coeff_m; classifier step; the model's gradients clipped to norm
   `clip`; model step.
The coefficients are as released: where the accuracy changes cancel (Delta_a = -Delta_v, common with batch
accuracies) the denominator is 1e-8 and the coefficients are about +-1e6 with opposite signs, so one encoder's
gradient is reversed for that step; the clip bounds the step (diagnostic `cggm_reversed`: the share of steps).
`coeff_clip=c` clamps each coefficient to [0, c] instead (not in the release).

As the official code (zrguo/CGGM @21e428c): `src/foodtrain.py` lines 17-21 and 36 (the two AdamW optimisers:
model lr 1e-3 and weight decay 6e-3, classifiers 5e-4 and 3e-3: here half the run's), 64-135 (the step above),
`src/eval_metrics.py` lines 165-173 (the cosine of clones of the output-layer weights, which the code calls gradients),
`models/msamodel.py` lines 97-132 (a classifier per modality, batch accuracies), `models/foodmodel.py` line 54
(the classifiers see detached features), `run/food_run.py` lines 51-64 (clip 0.8, rho 1.3, lambda 0.05).
The release has no audio-visual code; mmbench's adaptation: a classifier is one linear layer on the pooled
encoder features (the release: a small transformer over tokens), and the fusion weights of modality m are its
slice of the concat head (or its own head for `sum`), of the classifier's shape (the release has one fusion
output layer for both). The direction term is stored as the step's weights and coefficients (exactly the
gradient of the release's carried graph, and checkpointed with the run).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.method import AVModel, Batch, Method, Outputs, RunContext, init_linear
from mmbench.registry import register_method
from mmbench.train.engine import build_optimizer
from mmbench.train.models import ConcatFusion

MODALITIES = ("audio", "visual")


class GuidedModel(AVModel):
    """The audio-visual model plus a linear classifier per modality (trained by their own optimiser)."""

    def __init__(self, model: AVModel, num_classes: int, linear_init: str) -> None:
        super().__init__(model.audio_encoder, model.visual_encoder, model.fusion)
        self.classifiers = nn.ModuleDict({
            m: init_linear(nn.Linear(getattr(model, f"{m}_encoder").out_dim, num_classes), linear_init)
            for m in MODALITIES})


def coefficients(accuracy: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """coeff_m = (sum Delta - Delta_m) / (sum Delta + 1e-8), Delta = accuracy - previous (float64, as the release's
    Python floats)."""
    delta = accuracy.double() - previous.double()
    total = delta.sum() + 1e-8
    return (total - delta) / total


def direction_term(coeff: torch.Tensor, classifier_weights: list[torch.Tensor],
                   fusion_weights: list[torch.Tensor]) -> torch.Tensor:
    """l_gm = (sum_m |coeff_m| - sum_m coeff_m cos(phi_m's weights, modality m's fusion weights)) / M."""
    cosines = torch.stack([F.cosine_similarity(c.flatten(), f.flatten(), dim=0)
                           for c, f in zip(classifier_weights, fusion_weights, strict=True)])
    coeff = coeff.to(cosines.dtype)
    return (coeff.abs().sum() - (coeff * cosines).sum()) / len(cosines)


def fusion_weight_grads(fusion: nn.Module) -> list[torch.Tensor]:
    """Views of the gradients of each modality's fusion weights (the concat head's halves, or sum's two heads)."""
    if isinstance(fusion, ConcatFusion):
        grad = fusion.fc.weight.grad
        return [grad[:, : fusion.dim_a], grad[:, fusion.dim_a:]]
    return [fusion.fc_a.weight.grad, fusion.fc_v.weight.grad]


@register_method
class CGGM(Method):
    name = "cggm"
    version = 1
    description = ("Classifier-guided gradient modulation: a classifier per modality on detached features, with "
                   "its own optimiser, scales each encoder's gradient by how much less its batch accuracy improved "
                   "than the other's, and a term aligns each classifier's weights with its slice of the fusion "
                   "head (official code's step; departure: linear classifiers on pooled features, as the release "
                   "has no audio-visual model).")
    citation = ("Guo, Jin, Chen, Zhao. Classifier-guided Gradient Modulation for Enhanced Multimodal Learning. "
                "NeurIPS 2024")
    hparams = {"rho": 1.3, "lam": 0.05, "clip": 0.8, "classifier_lr_ratio": 0.5, "classifier_wd_ratio": 0.5,
               "coeff_clip": 0.0}
    help = {
        "rho": "scale of the encoders' gradient coefficients",
        "lam": "weight of the direction term l_gm (from the previous step) in the model's loss",
        "clip": "the model's gradients are clipped to this norm before its step; 0 = no clip",
        "classifier_lr_ratio": "the classifiers' optimiser (the run's family, no schedule) has the run's initial "
                               "learning rate times this (the release: 5e-4 against 1e-3)",
        "classifier_wd_ratio": "and the run's weight decay times this (the release: 3e-3 against 6e-3)",
        "coeff_clip": "0: the coefficients as released (about +-1e6, one negative, where the accuracy changes "
                      "cancel); c > 0: each clamped to [0, c] (not in the release)",
    }
    fusions = ("concat", "sum")
    #: The released coefficients make the ci suite's accuracy follow batch-accuracy noise (seed SD 2.0 pp, 1.0 pp
    #: between CPU capabilities): a 2 pp drop was caught in 0 % of simulated CI runs. The gate trains the clamped
    #: coefficients (SD 1.5 pp; the released ones are tested by hand values), on 20 seeds (6 caught 9 %).
    check_suite = {"coeff_clip": 1.0, "ci_seeds": 20}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.previous_accuracy = torch.zeros(len(MODALITIES), dtype=torch.float64, device=ctx.device)
        self.direction: dict[str, Any] | None = None  # the step's coefficients and weights, for l_gm at the next

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return GuidedModel(model, ctx.num_classes, ctx.cfg.linear_init)

    def parameters(self, model: nn.Module, ctx: RunContext) -> list[nn.Parameter]:
        return [p for name, p in model.named_parameters() if not name.startswith("classifiers.")]

    def extra_optimizers(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.optim.Optimizer]:
        cfg = dataclasses.replace(ctx.cfg, lr=ctx.cfg.lr * self.hp["classifier_lr_ratio"],
                                  weight_decay=ctx.cfg.weight_decay * self.hp["classifier_wd_ratio"])
        self.classifier_optimizer, _ = build_optimizer(model.classifiers.parameters(), cfg)
        self.model_parameters = self.parameters(model, ctx)  # what the clip bounds: all but the classifiers
        return {"classifiers": self.classifier_optimizer}

    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        out, loss = self.modulated_backward(model, batch, ctx)
        self.classifier_optimizer.step()
        optimizer.step()
        return out, loss

    def modulated_backward(self, model: nn.Module, batch: Batch, ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        """Steps 1-5 up to the optimisers' steps: every gradient as the two optimisers will apply it."""
        y = batch.y
        with ctx.autocast():
            out = model(batch.audio, batch.visual)
            loss = F.cross_entropy(out.logits, out.targets(y))
        loss.backward()
        if self.direction is not None:
            loss = loss + self._add_direction_gradient(model)
        self.classifier_optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            features = (out.feat_a.detach(), out.feat_v.detach())
            heads = [model.classifiers[m](f) for m, f in zip(MODALITIES, features, strict=True)]
            sum(F.cross_entropy(h, y) for h in heads).backward()
        accuracy = torch.stack([(h.argmax(1) == y).double().mean() for h in heads])
        coeff = raw = coefficients(accuracy, self.previous_accuracy)
        if self.hp["coeff_clip"] > 0:
            coeff = coeff.clamp(0.0, self.hp["coeff_clip"])
        self.previous_accuracy = accuracy
        self.direction = {"coeff": coeff,
                          "classifiers": [model.classifiers[m].weight.detach().clone() for m in MODALITIES],
                          "fusion": [w.clone() for w in model.fusion.decision_weights()]}
        for m, c in zip(MODALITIES, coeff, strict=True):
            for p in getattr(model, f"{m}_encoder").parameters():
                if p.grad is not None:
                    p.grad.mul_((c * self.hp["rho"]).to(p.grad.dtype))
        if self.hp["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model_parameters, self.hp["clip"])
        ctx.log(cggm_coeff_a=coeff[0], cggm_coeff_v=coeff[1], cggm_reversed=(raw < 0).any().double(),
                cggm_acc_a=accuracy[0], cggm_acc_v=accuracy[1])
        return out, loss

    def _add_direction_gradient(self, model: nn.Module) -> torch.Tensor:
        """Adds lam * d l_gm(t-1) / d(fusion weights), at the weights of step t-1, to the fusion gradients, as the
        release's backward through its carried graph does; returns lam * l_gm(t-1) (for the logged loss)."""
        fusion = [w.detach().requires_grad_() for w in self.direction["fusion"]]
        term = self.hp["lam"] * direction_term(self.direction["coeff"], self.direction["classifiers"], fusion)
        for grad, extra in zip(fusion_weight_grads(model.fusion), torch.autograd.grad(term, fusion), strict=True):
            grad.add_(extra)
        return term.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"previous_accuracy": self.previous_accuracy, "direction": self.direction}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        device = next(model.parameters()).device
        self.previous_accuracy = state["previous_accuracy"].to(device)
        direction = state["direction"]
        self.direction = None if direction is None else {
            "coeff": direction["coeff"].to(device),
            "classifiers": [w.to(device) for w in direction["classifiers"]],
            "fusion": [w.to(device) for w in direction["fusion"]]}

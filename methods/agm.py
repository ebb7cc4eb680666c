"""`agm`: adaptive gradient modulation (Li, Li, Hu, Lei, Li, Zhou, ICCV 2023), as BalanceBenchmark implements it.

The authors' repository (lihongcs/AGM) publishes no training code, so this follows the only complete
implementation, BalanceBenchmark's (`balancemm/trainer/AGM_trainer.py` @4c1482f). Each step measures each
modality's response with the other's input zeroed (eval mode, no gradients; lines 225-268):
  r_a = (F(x_a, x_v) - F(0, x_v)) / 2,   r_v = (F(x_a, x_v) - F(x_a, 0)) / 2   (F the fused logits),
and its score S_m = mean_i -log max(softmax(r_m)_i[y_i], 1e-8) (lines 553-561). With M = 2 modalities,
  ratio_m = exp(2 (S_m - mean_k S_k)),  target_m = exp(2 (Sbar_m - mean_k Sbar_k)),
  coeff_m = exp(alpha min(target_m - ratio_m, clamp))                      (lines 569-573),
Sbar the running mean of S over all steps so far (t = epoch N + step + 1; lines 568, 574). After the plain
cross-entropy's backward (train mode), every parameter of encoder m with more than one dimension has its
gradient multiplied by coeff_m (lines 576-581); if any entry of the fusion weight's gradient is beyond +-5,
the whole model's gradient norm is clipped to 5 (lines 582-585).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import Outputs


def response_scores(responses: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """S_m for m in (a, v): the mean true-class negative log-probability, each capped at -log 1e-8."""
    probs = [F.softmax(responses[m].float(), dim=1).gather(1, y[:, None]).squeeze(1) for m in "av"]
    return torch.stack([-torch.log(p.clamp(min=1e-8)).mean() for p in probs])


def modulation_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float,
                            clamp: float) -> torch.Tensor:
    """coeff_m = exp(alpha min(exp(2 (Sbar_m - mean Sbar)) - exp(2 (S_m - mean S)), clamp)), for two modalities."""
    ratio = torch.exp(2 * (scores - scores.mean()))
    target = torch.exp(2 * (running - running.mean()))
    return torch.exp(alpha * torch.clamp(target - ratio, max=clamp))


@register_method
class AGM(Method):
    name = "agm"
    version = 1
    description = ("Adaptive gradient modulation: each encoder's gradient is scaled by how far its zero-masked "
                   "response's loss is from its running mean's share (BalanceBenchmark's implementation; the "
                   "authors released no training code). 2 extra eval-mode forwards per step.")
    citation = "Li, Li, Hu, Lei, Li, Zhou. Boosting Multi-modal Model Performance with Adaptive Gradient " \
               "Modulation. ICCV 2023, arXiv 2308.07686"
    hparams = {"alpha": 0.1, "clamp": 7.0, "clip_at": 5.0}
    help = {
        "alpha": "strength of the modulation (BalanceBenchmark's default)",
        "clamp": "upper bound of target - ratio inside the exponential",
        "clip_at": "clip the gradient norm to this when the fusion weight's gradient has an entry beyond +-it",
    }
    fusions = ("concat",)

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.running = torch.zeros(2, device=ctx.device)  # Sbar_a, Sbar_v: 0 before the first step (lines 486-491)

    @torch.no_grad()
    def responses(self, model: nn.Module, batch: Batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        """r_a and r_v (eval mode, each modality's input zeroed in turn), the model back in train mode."""
        model.eval()
        with ctx.autocast():
            full = model(batch.audio, batch.visual).logits
            without_audio = model(torch.zeros_like(batch.audio), batch.visual).logits
            without_visual = model(batch.audio, torch.zeros_like(batch.visual)).logits
        model.train()
        return {"a": (full - without_audio) / 2, "v": (full - without_visual) / 2}

    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        responses = self.responses(model, batch, ctx)
        with ctx.autocast():
            out = self.forward(model, batch, ctx)
            loss = self.loss(out, batch, ctx)
        loss.backward()
        scores = response_scores(responses, out.targets(batch.y))
        coeffs = modulation_coefficients(scores, self.running, self.hp["alpha"], self.hp["clamp"])
        t = ctx.epoch * ctx.steps_per_epoch + ctx.step + 1
        self.running = self.running * (t - 1) / t + scores / t
        for coeff, encoder in zip(coeffs, (model.audio_encoder, model.visual_encoder), strict=True):
            for param in encoder.parameters():
                if param.grad is not None and param.grad.ndim != 1:  # not biases and batch-norm parameters
                    param.grad.mul_(coeff)
        self._clip_if_the_fusion_gradient_is_large(model)
        ctx.log(agm_coeff_a=coeffs[0], agm_coeff_v=coeffs[1], agm_score_a=scores[0], agm_score_v=scores[1])
        optimizer.step()
        return out, loss

    def _clip_if_the_fusion_gradient_is_large(self, model: nn.Module) -> None:
        """`clip_grad_norm_(model, clip_at)` when the fusion weight's gradient leaves [-clip_at, clip_at],
        decided on the device."""
        limit = self.hp["clip_at"]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        large = model.fusion.fc.weight.grad.abs().max() > limit
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = torch.where(large, torch.clamp(limit / (total + 1e-6), max=1.0), 1.0)
        for grad in grads:
            grad.mul_(scale)

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.cpu()}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.running = state["running"].to(next(model.parameters()).device)

"""`mla`: multimodal learning with alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao, CVPR 2024).

Both encoders share one linear head h. Each step encodes both modalities once, then trains in turns: the
audio turn backpropagates CE(h(f_a), y) and steps the optimiser, then the visual turn CE(h(f_v), y) with the
head as the audio turn left it, and steps again. At evaluation the prediction fuses h(f_a) and h(f_v):
  static: av_alpha h(f_a) + (1 - av_alpha) h(f_v)  (the release's default);
  batch:  weights exp(H_max - H_m) / sum, H_m the entropy of softmax(h(f_m)) over the batch axis summed
          over the batch (one weight per modality and evaluation batch: the release's `--dynamic`);
  sample: the same per sample (BalanceBenchmark's reading).

As the official code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ab6c184): `main.py`
lines 65-87 (the entropy gating), 419-470 (the two turns and the gradients deleted after them), 481 (the
schedule stepped after each epoch), 615-651 (evaluation); `models/basic_model.py` lines 31-32 (the shared
512 -> C head); `utils/utils.py` lines 24-41 (the gradient projection). Two released quirks, each behind a
setting:
- the projection of the head's gradient (OWM) never runs: its guard tests the parameter name
  "module.weight" on a Linear whose weight is named "weight" (`owm=off`, default). `owm=on` runs it as
  written: P <- P - (k k^T) / (alpha + k r) with k = P r^T, r the batch-mean feature, the division element-wise
  (k r is an outer product), P <- P / ||P||_F, grad_W <- grad_W P^T, skipped on the first call.
- under the release's PyTorch 1.8, `zero_grad()` leaves zero gradients, so the visual turn's SGD step also
  applies momentum and weight decay to the audio encoder; `idle_momentum=true` reproduces that, the default
  (false) is PyTorch 2's `zero_grad`, which skips the idle encoder.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.registry import register_method
from mmbench.train.models import AVModel, Outputs, init_linear

#: The README's CREMA-D command and `main.py`'s defaults (lines 26-34, 749, 760): SGD lr 1e-3, momentum 0.9,
#: weight decay 1e-4, StepLR(70, 0.1), 100 epochs, batch 64; 3 frames (`dataset/dataset.py` line 142),
#: Kaldi fbank audio (`data/extract_fbank.py`), classes sorted (line 90), evaluation batches of 64 (which the
#: batch gating depends on); the release ran under PyTorch 1.8 (`idle_momentum`). No Kinetics-Sounds script.
OFFICIAL_CREMAD = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 70,
                   "lr_gamma": 0.1, "epochs": 100, "batch_size": 64, "eval_batch_size": 64, "frames": 3,
                   "image_size": 224, "class_order": "sorted", "audio_frontend": "fbank", "idle_momentum": True}


def entropy_gates(logits_a: torch.Tensor, logits_v: torch.Tensor, over: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_a, w_v) = exp(H_max - H_m) / sum: `over="batch"` (`main.py` lines 65-87: softmax over the batch
    axis, entropy summed over the batch, one pair per batch) or `"sample"` (one pair per sample, (B, 1))."""
    def entropy(logits: torch.Tensor) -> torch.Tensor:  # entr(0) = 0 where the release's p log p is NaN
        if over == "batch":
            return torch.special.entr(F.softmax(logits, dim=0)).sum()
        return torch.special.entr(F.softmax(logits, dim=1)).sum(dim=1, keepdim=True)

    h_a, h_v = entropy(logits_a), entropy(logits_v)
    h_max = torch.maximum(h_a, h_v)
    g_a, g_v = torch.exp(h_max - h_a), torch.exp(h_max - h_v)
    return g_a / (g_a + g_v), g_v / (g_a + g_v)


def owm_update(projection: torch.Tensor, feat: torch.Tensor, step: int, steps_per_epoch: int) -> torch.Tensor:
    """The projection after one batch of `feat` (`utils/utils.py` lines 26-37, as written)."""
    alpha = 0.1 ** (step / steps_per_epoch + 1)
    r = feat.detach().float().mean(dim=0, keepdim=True)  # 1 x d
    k = projection @ r.T  # d x 1
    projection = projection - (k @ k.T) / (alpha + k @ r)  # k @ r: d x d, so the division is element-wise
    return projection / projection.norm()


class SharedHead(nn.Module):
    """The two encoders and one head for both (`models/basic_model.py` lines 31-32)."""

    def __init__(self, model: AVModel, num_classes: int, linear_init: str) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder = model.audio_encoder, model.visual_encoder
        self.head = init_linear(nn.Linear(model.audio_encoder.out_dim, num_classes), linear_init)

    def encode(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_encoder(audio), self.visual_encoder(visual)


@register_method
class MLA(Method):
    name = "mla"
    version = 1
    description = ("Alternating unimodal adaptation: one head shared by both encoders, trained in an audio "
                   "turn then a visual turn per batch (an optimiser step each); prediction = a fixed or "
                   "entropy-gated mix of the two (as released, the head's gradient projection never runs: "
                   "owm=off; departure: PyTorch 2 zero_grad by default, idle_momentum=true is the release's 1.8).")
    citation = "Zhang, Yoon, Bansal, Yao. Multimodal Representation Learning by Alternating Unimodal " \
               "Adaptation. CVPR 2024, arXiv 2311.10707"
    hparams = {"gating": "static", "av_alpha": 0.5, "owm": "off", "idle_momentum": False}
    choices = {"gating": ("static", "batch", "sample"), "owm": ("off", "on")}
    help = {
        "gating": "fusion at evaluation: static = av_alpha mix (the release's default); batch = entropy gates "
                  "per evaluation batch (the release's --dynamic); sample = per sample (BalanceBenchmark)",
        "av_alpha": "audio weight of the static mix",
        "owm": "off = as released (the projection's guard never matches); on = the projection as written",
        "idle_momentum": "the visual turn's SGD step also moves the audio encoder by momentum and weight decay, "
                         "as under the release's PyTorch 1.8",
    }
    fusions = ("concat",)  # the shared head replaces the fusion layer; concat is the model it is built from
    modality_logits = "late-fusion"
    profiles = {"official": {"cremad": OFFICIAL_CREMAD}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.projection: torch.Tensor | None = None
        self.projections_skipped = 0  # the release skips the very first call

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        if model.audio_encoder.out_dim != model.visual_encoder.out_dim:
            raise ValueError("mla shares one head between encoders of equal feature size")
        return SharedHead(model, ctx.num_classes, ctx.cfg.linear_init)

    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            feats = model.encode(batch.audio, batch.visual)
        logits, losses = [], []
        for feat in feats:  # audio turn, then visual turn, on the head the previous turn stepped
            with ctx.autocast():
                z = model.head(feat)
                loss = F.cross_entropy(z, batch.y)
            loss.backward()
            self._project(model.head.weight, feat, ctx)
            optimizer.step()
            optimizer.zero_grad(set_to_none=not self.hp["idle_momentum"])
            logits.append(z.detach())
            losses.append(loss.detach())
        optimizer.zero_grad(set_to_none=True)  # `main.py` lines 468-470
        alpha = self.hp["av_alpha"]
        out = Outputs(alpha * logits[0] + (1 - alpha) * logits[1], logits[0], logits[1], *feats)
        return out, alpha * losses[0] + (1 - alpha) * losses[1]

    def _project(self, weight: nn.Parameter, feat: torch.Tensor, ctx: RunContext) -> None:
        if self.hp["owm"] == "off":
            return
        if self.projections_skipped == 0:
            self.projections_skipped = 1
            return
        if self.projection is None:
            self.projection = torch.eye(weight.shape[1], device=weight.device)
        self.projection = owm_update(self.projection, feat, ctx.step, ctx.steps_per_epoch)
        weight.grad = weight.grad @ self.projection.T.to(weight.grad.dtype)

    def predict(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        feat_a, feat_v = model.encode(batch.audio, batch.visual)
        z_a, z_v = model.head(feat_a), model.head(feat_v)
        if self.hp["gating"] == "static":
            w_a, w_v = self.hp["av_alpha"], 1 - self.hp["av_alpha"]
        else:
            w_a, w_v = entropy_gates(z_a.float(), z_v.float(), self.hp["gating"])
        return Outputs(w_a * z_a + w_v * z_v, z_a, z_v, feat_a, feat_v)

    def state_dict(self) -> dict[str, Any]:
        return {"projection": None if self.projection is None else self.projection.cpu(),
                "projections_skipped": self.projections_skipped}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        saved = state.get("projection")
        self.projection = None if saved is None else saved.to(next(model.parameters()).device)
        self.projections_skipped = state.get("projections_skipped", 0)

"""`lfm`: learning the modality gap dynamically, fitted schedule (Yang, Wan, Jiang, Xu, NeurIPS 2024).

Each modality has its own linear head, h_a = cls_a(f_a) and h_v = cls_v(f_v); the prediction is the late
fusion (h_a + h_v) / 2. The loss mixes the supervised and an unsupervised alignment term with weights that
move over the epochs:
  L = 2 (k_0(e) CE((h_a + h_v) / 2, y) + k_1(e) JS(softmax h_a, softmax h_v)),  k_1 = 1 - k_0,
  JS(p, q) = (KL(m || p) + KL(m || q)) / 2 with m = (p + q) / 2 (batch means),
  k_0(e) = 0.204623704 + 3.35472727e-3 e + 1.22989557e-4 e^2 - 2.92947416e-6 e^3 + 2.23835486e-8 e^4
           - 5.39717505e-11 e^5   (e = the epoch from 0; the authors' fit of their learned weights over 200 epochs).

As the official code (njustkmg/NeurIPS24-LFM @ad44fa0): `Crema_epoch.py` lines 38-45 (the alignment term, as
`kl_div(p.log(), m)`), 47-53 (the fitted weights), 68-72 (logits and loss), 113-116 (evaluation), 190-197 (the
schedule stepped before each epoch); `model/AudioVideo.py` lines 54-67 (the two heads). The weights follow the
absolute epoch as released, so a run shorter than 200 epochs sees only the start of the curve. Not here: the
learned variant (`Crema_epoch_learnable.py`, a hypergradient step on a held-out batch before each epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.models import AVModel, Outputs, init_linear
from mmbench.registry import register_method

#: `Crema_epoch.py` lines 49-50.
K0_COEFFICIENTS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)

#: `data/crema.json` (SGD 1e-2, momentum 0.9, weight decay 1e-4, StepLR(70, 0.1), 200 epochs, batch 64, 1 fps),
#: which `Crema_epoch.py` merges into its config (lines 148-153); the StepLR steps before each epoch
#: (line 196). The audio is `dataset/CREMA.py` lines 62-68: 20 s at 22,050 Hz, as AUG's (`aug-stft`).
OFFICIAL_CREMAD = {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 70,
                   "lr_gamma": 0.1, "lr_step_at": "epoch_start", "epochs": 200, "batch_size": 64, "frames": 1,
                   "image_size": 224, "audio_frontend": "aug-stft"}


def fitted_weights(epoch: int) -> tuple[float, float]:
    """(k_0, k_1): the weights of the supervised and the alignment term at `epoch` (from 0)."""
    k0 = sum(c * epoch ** i for i, c in enumerate(K0_COEFFICIENTS))
    return k0, 1.0 - k0


def alignment(logits_a: torch.Tensor, logits_v: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon divergence between the two modalities' predictions, batch mean."""
    p, q = F.softmax(logits_a, dim=-1), F.softmax(logits_v, dim=-1)
    m = 0.5 * p + 0.5 * q
    return 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))


class LateFusion(nn.Module):
    """Two encoders, one linear head each; logits (h_a + h_v) / 2."""

    def __init__(self, audio_encoder: nn.Module, visual_encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder = audio_encoder, visual_encoder
        self.head_a = nn.Linear(audio_encoder.out_dim, num_classes)
        self.head_v = nn.Linear(visual_encoder.out_dim, num_classes)

    def encode(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_encoder(audio), self.visual_encoder(visual)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        feat_a, feat_v = self.encode(audio, visual)
        h_a, h_v = self.head_a(feat_a), self.head_v(feat_v)
        return Outputs(0.5 * h_v + 0.5 * h_a, h_a, h_v, feat_a, feat_v)


@register_method
class LFM(Method):
    name = "lfm"
    version = 1
    description = ("Learning the modality gap, fitted schedule: separate heads, late fusion, and a per-epoch mix "
                   "of cross-entropy and the heads' Jensen-Shannon alignment (the learned schedule is not "
                   "implemented).")
    citation = "Yang, Wan, Jiang, Xu. Facilitating Multimodal Classification via Dynamically Learning Modality " \
               "Gap. NeurIPS 2024"
    fusions = ("concat",)  # no fusion layer is trained; concat is the model it is built from
    modality_logits = "late-fusion"
    profiles = {"official": {"cremad": OFFICIAL_CREMAD}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.k0, self.k1 = fitted_weights(0)

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        late = LateFusion(model.audio_encoder, model.visual_encoder, ctx.num_classes)
        for head in (late.head_a, late.head_v):  # xavier-normal, zero bias: `weight_init` (utils/tools.py 114-117)
            init_linear(head, ctx.cfg.linear_init)
        return late

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        self.k0, self.k1 = fitted_weights(ctx.epoch)

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        return 2 * (self.k0 * F.cross_entropy(out.logits, y) + self.k1 * alignment(out.logits_a, out.logits_v))

    def diagnostics(self) -> dict[str, float]:
        return {"k0": self.k0, "k1": self.k1}

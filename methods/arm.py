"""`arm`: asymmetric reinforcing against multimodal representation bias (Gao et al., AAAI 2025).

Per batch, each modality's contribution combines the fused model's confidence with
histogram information terms between the modality's features and a probe fusion f of both:
  NMI_m = NMI(f_m; f) (30 bins),  II_m = NMI_m - NCMI(f_m; f | f_other) (2 bins),
  c_a = P_f * NMI_a + P_a * II_a,  c_v = P_f * NMI_v + P_v * II_v
(P = batch-mean true-class probability through the shared classifier; every (sample, dim)
value of the flattened batch features is one data point, as in the official code). The
features are then reweighted asymmetrically before the fusion projection,
  g = head([(c_a / c_v) f_v ; (c_v / c_a) f_a]),  logits = fc(g),
and the loss is the cross-entropy of these logits only. The probe layer gets no gradient.
At inference no label is used: the weights come from c_a, c_v averaged over the last
training epoch (the official code recomputes them from test labels; mmbench never does).
The paper's min-max loss and re-sampling are in neither released code version and are not here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mmbench.data import Batch
from mmbench.method import Method, RunContext
from mmbench.metrics import true_class_score
from mmbench.models import AVModel, Outputs
from mmbench.registry import register_method


def _bin(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins over [min, max], the last one closed (numpy.histogram's rule)."""
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return torch.zeros_like(x, dtype=torch.long)
    return ((x - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    p = counts[counts > 0].double() / counts.sum()
    return -(p * p.log()).sum()


def _joint_counts(codes: list[torch.Tensor], bins: int) -> torch.Tensor:
    index = torch.zeros_like(codes[0])
    for code in codes:
        index = index * bins + code
    return torch.bincount(index, minlength=bins ** len(codes)).reshape([bins] * len(codes))


def normalized_mutual_information(x: torch.Tensor, y: torch.Tensor, bins: int = 30) -> float:
    """2 I(X;Y) / (H(X) + H(Y)) from a bins x bins histogram of the paired values (nats)."""
    counts = _joint_counts([_bin(x.flatten(), bins), _bin(y.flatten(), bins)], bins)
    h_x, h_y, h_xy = _entropy(counts.sum(1)), _entropy(counts.sum(0)), _entropy(counts)
    denominator = h_x + h_y
    return float(2 * (h_x + h_y - h_xy) / denominator) if denominator > 0 else 0.0


def normalized_conditional_mutual_information(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                                              bins: int = 2) -> float:
    """I(X;Y|Z) / (H(X|Z) + H(Y|Z)), plug-in estimates from a bins^3 histogram."""
    counts = _joint_counts([_bin(t.flatten(), bins) for t in (x, y, z)], bins)
    h_z = _entropy(counts.sum((0, 1)))
    h_xz, h_yz, h_xyz = _entropy(counts.sum(1)), _entropy(counts.sum(0)), _entropy(counts)
    cmi = h_xz + h_yz - h_xyz - h_z
    denominator = (h_xz - h_z) + (h_yz - h_z)
    return float(cmi / denominator) if denominator > 0 else 0.0


def contributions(feat_a: torch.Tensor, feat_v: torch.Tensor, probe: torch.Tensor, p_fused: float,
                  p_a: float, p_v: float, bins: int = 30, cond_bins: int = 2) -> tuple[float, float]:
    """(c_a, c_v) of one batch."""
    nmi_a = normalized_mutual_information(feat_a, probe, bins)
    nmi_v = normalized_mutual_information(feat_v, probe, bins)
    ii_a = nmi_a - normalized_conditional_mutual_information(feat_a, probe, feat_v, cond_bins)
    ii_v = nmi_v - normalized_conditional_mutual_information(feat_v, probe, feat_a, cond_bins)
    return p_fused * nmi_a + p_a * ii_a, p_fused * nmi_v + p_v * ii_v


class ARMModel(nn.Module):
    def __init__(self, audio_encoder: nn.Module, visual_encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.audio_encoder, self.visual_encoder = audio_encoder, visual_encoder
        dim = audio_encoder.out_dim
        self.probe = nn.Linear(2 * dim, dim).requires_grad_(False)  # measurement only, never trained
        self.head = nn.Linear(2 * dim, dim)  # the fusion projection of the reweighted features
        self.fc = nn.Linear(dim, num_classes)  # shared classifier
        self.dim = dim
        self.weights = (1.0, 1.0)  # (on f_v, on f_a); set per batch in training, from epoch means after

    def fuse(self, feat_a: torch.Tensor, feat_v: torch.Tensor) -> Outputs:
        """fc(head([w_v f_v ; w_a f_a])), split per modality like a concat head (it is linear
        in each half): logits_m = fc.W head_m (w_m f_m) + fc(head.bias) / 2."""
        w_v, w_a = self.weights
        head_v, head_a = self.head.weight[:, : self.dim], self.head.weight[:, self.dim:]
        shared = self.fc(self.head.bias) / 2
        logits_v = (w_v * feat_v) @ head_v.T @ self.fc.weight.T + shared
        logits_a = (w_a * feat_a) @ head_a.T @ self.fc.weight.T + shared
        return Outputs(logits_a + logits_v, logits_a, logits_v, feat_a, feat_v)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        return self.fuse(self.audio_encoder(audio), self.visual_encoder(visual))


@register_method
class ARM(Method):
    name = "arm"
    description = "Asymmetric reinforcing: reweight features by information-based contributions before fusion."
    citation = "Gao, Cao, Zhu, Wang, Hu. Asymmetric Reinforcing against Multi-modal Representation Bias. " \
               "AAAI 2025, arXiv 2501.01240"
    hparams = {"bins": 30, "cond_bins": 2, "max_weight": 10.0}
    help = {
        "bins": "histogram bins of the NMI estimates",
        "cond_bins": "histogram bins of the conditional NMI estimates",
        "max_weight": "cap on c_a / c_v and its inverse (guards a zero contribution)",
    }
    fusions = ("concat",)
    # Only a KS config is released (SGD lr 1e-3 in the logged run, 30 epochs, batch 128, 1 frame);
    # on CREMA-D the same values with the CREMA-D input pipeline.
    _official = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 1000,
                 "epochs": 30, "batch_size": 128, "frames": 1, "image_size": 224}
    profiles = {"official": {"cremad": _official, "kinetics-sounds": _official}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.epoch_sums = [0.0, 0.0, 0]  # c_a, c_v, batches
        self.inference_contributions = (1.0, 1.0)

    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return ARMModel(model.audio_encoder, model.visual_encoder, ctx.num_classes)

    def _weights(self, c_a: float, c_v: float) -> tuple[float, float]:
        cap = self.hp["max_weight"]
        ratio = c_a / c_v if c_v > 0 else cap
        ratio = min(max(ratio, 1 / cap), cap)
        return ratio, 1 / ratio  # (on f_v, on f_a)

    def forward(self, model: ARMModel, batch: Batch, ctx: RunContext) -> Outputs:
        feat_a, feat_v = model.audio_encoder(batch.audio), model.visual_encoder(batch.visual)
        with torch.no_grad():
            probe = model.probe(torch.cat([feat_v, feat_a], 1))
            p_f, p_a, p_v = (float(true_class_score(model.fc(f), batch.y)) / len(batch)
                             for f in (probe, feat_a, feat_v))
            c_a, c_v = contributions(feat_a, feat_v, probe, p_f, p_a, p_v, self.hp["bins"], self.hp["cond_bins"])
        self.epoch_sums = [self.epoch_sums[0] + c_a, self.epoch_sums[1] + c_v, self.epoch_sums[2] + 1]
        ctx.log(c_a=c_a, c_v=c_v)
        model.weights = self._weights(c_a, c_v)
        return model.fuse(feat_a, feat_v)

    def on_epoch_end(self, model: ARMModel, ctx: RunContext) -> None:
        c_a, c_v, n = self.epoch_sums
        if n:
            self.inference_contributions = (c_a / n, c_v / n)
        self.epoch_sums = [0.0, 0.0, 0]

    def predict(self, model: ARMModel, batch: Batch, ctx: RunContext) -> Outputs:
        model.weights = self._weights(*self.inference_contributions)
        return model(batch.audio, batch.visual)

    def diagnostics(self) -> dict[str, float]:
        c_a, c_v = self.inference_contributions
        return {"inference_c_a": c_a, "inference_c_v": c_v,
                "inference_ratio": c_a / c_v if c_v else math.inf}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_sums": list(self.epoch_sums), "inference": list(self.inference_contributions)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.epoch_sums = list(state["epoch_sums"])
        self.inference_contributions = tuple(state["inference"])

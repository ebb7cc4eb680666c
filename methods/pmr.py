"""`pmr`: prototypical modal rebalance, the released prototypical cross-entropy (Fan et al., CVPR 2023).

Before every epoch, each modality's class prototypes P_m[c] are the mean features of class c over one
tenth of the training batches (at least one batch), with the training augmentation, the model in eval
mode; from the third epoch on they are mixed with the previous ones: P <- (1 - mu) P_new + mu P_old.
Each step compares the features with the prototypes, sim_m = -||f_m - P_m[c]|| for every class c, and
the batch's summed true-class probabilities s_m = sum_i softmax(sim_m)_i[y_i] say which modality lags:
  rho = s_a / s_v;  L = CE(z, y) + beta CE(sim_a, y) + lam CE(sim_v, y),
  (beta, lam) = (0, alpha) if rho > 1, (alpha, 0) if rho < 1, (0, 0) if equal,
in the modulation epochs [modulation_starts, modulation_ends] (plain CE outside them). The prototypes are
constants, so the prototype term trains only the lagging modality's encoder.

As the official code (fanyunfeng-bit/Modal-Imbalance-PMR @3615e48, `main_Prototype_grad.py`): lines 69-75
(Euclidean distances), 152-153 (similarities), 158-160 (the ratio), 169-178 (the coefficients and the loss),
383-441 (the prototypes: eval mode, the shuffled training loader, `all_num // 10` batches, the momentum from
the computation after epoch 1 on), 535-557 (prototypes before training and after every epoch). Not here:
the paper's entropy regularisation (`main_Proto_PER.py`, which the repository does not contain).
Departure: a class absent from the prototype batches keeps its previous prototype (zero before the first
epoch); the official code divides by its count of 0 and trains on NaN.
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

#: `bash.sh` line 217: concat fusion, 3 frames, 130 epochs, AdaGrad lr 1e-3 (PyTorch's defaults: no weight
#: decay, no schedule, `main_Prototype_grad.py` lines 466-468), batch 64 (the default, line 35), alpha 2.0,
#: modulation in epochs 0-70, no prototype momentum; the audio of `data/CREMAD/audio_preprocessing.py` (the
#: `psd` front-end: 257 x 1004 log power spectrogram, z-scored per clip). No Kinetics-Sounds script.
OFFICIAL_CREMAD = {"optimizer": "adagrad", "lr": 1e-3, "weight_decay": 0.0, "lr_step": 1000, "epochs": 130,
                   "batch_size": 64, "fusion": "concat", "frames": 3, "image_size": 224, "audio_frontend": "psd",
                   "alpha": 2.0, "momentum_coef": 0.0, "modulation_ends": 70}


def prototype_similarity(feat: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-||f_i - P_c||_2 for every sample i and class c (B x C)."""
    return -(feat[:, None, :] - prototypes[None, :, :]).norm(dim=2)


def summed_true_probability(sim: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.softmax(sim, dim=1).gather(1, y[:, None]).sum()


def prototype_coefficients(sim_a: torch.Tensor, sim_v: torch.Tensor, y: torch.Tensor,
                           alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(beta, lam, rho): the weights of the audio and visual prototype losses, on the device."""
    rho = summed_true_probability(sim_a, y) / summed_true_probability(sim_v, y)
    beta = torch.where(rho < 1, alpha, 0.0)
    lam = torch.where(rho > 1, alpha, 0.0)
    return beta, lam, rho


def class_means(feat: torch.Tensor, y: torch.Tensor, num_classes: int,
                previous: torch.Tensor) -> torch.Tensor:
    """Mean feature of each class; `previous`'s row for a class with no sample."""
    sums = torch.zeros(num_classes, feat.shape[1], dtype=feat.dtype).index_add_(0, y, feat)
    counts = torch.bincount(y, minlength=num_classes)
    return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], previous)


@register_method
class PMR(Method):
    name = "pmr"
    version = 1
    description = ("Prototypical modal rebalance: a prototype cross-entropy (distances to class-mean features "
                   "from a tenth of the training batches) on the lagging modality, as released (the paper's "
                   "entropy regularisation is not in the code; departure: a class absent from those batches keeps its "
                   "prototype, where the release trains on NaN).")
    citation = "Fan, Xu, Wang, Wang, Guo. PMR: Prototypical Modal Rebalance for Multimodal Learning. CVPR 2023"
    hparams = {"alpha": 1.0, "momentum_coef": 0.2, "modulation_starts": 0, "modulation_ends": 100}
    dataset_hparams = {"cremad": {"alpha": 2.0, "momentum_coef": 0.0, "modulation_ends": 70}}
    help = {
        "alpha": "weight of the lagging modality's prototype cross-entropy",
        "momentum_coef": "mu: prototypes = (1 - mu) new + mu previous, from the third epoch on",
        "modulation_starts": "first epoch (from 0) with the prototype loss",
        "modulation_ends": "last epoch (inclusive) with the prototype loss",
    }
    profiles = {"official": {"cremad": OFFICIAL_CREMAD}}

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.prototypes: dict[str, torch.Tensor] | None = None

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        batches = max(1, ctx.steps_per_epoch // 10)
        generator = ctx.generator("method")
        order = torch.randperm(len(ctx.train), generator=generator, device=generator.device).cpu()
        rows = ctx.train.subset(order[: batches * ctx.cfg.batch_size])
        parts = ctx.infer(model, rows, features=True, augment=True)
        new = {}
        for m in "av":
            feat = parts[f"feat_{m}"].float()
            previous = self.prototypes[m].cpu() if self.prototypes else torch.zeros(ctx.num_classes, feat.shape[1])
            new[m] = class_means(feat, rows.y, ctx.num_classes, previous)
            if self.prototypes is not None and ctx.epoch >= 2:  # official: momentum after epoch 1's computation
                new[m] = (1 - self.hp["momentum_coef"]) * new[m] + self.hp["momentum_coef"] * previous
        self.prototypes = {m: p.to(ctx.device) for m, p in new.items()}

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        y = out.targets(batch.y)
        ce = F.cross_entropy(out.logits, y)
        if not self.hp["modulation_starts"] <= ctx.epoch <= self.hp["modulation_ends"]:
            return ce
        sim_a = prototype_similarity(out.feat_a.float(), self.prototypes["a"])
        sim_v = prototype_similarity(out.feat_v.float(), self.prototypes["v"])
        beta, lam, rho = prototype_coefficients(sim_a, sim_v, y, self.hp["alpha"])
        ctx.log(proto_rho=rho, proto_boost_audio=(beta > 0).float(), proto_boost_visual=(lam > 0).float())
        return ce + beta * F.cross_entropy(sim_a, y) + lam * F.cross_entropy(sim_v, y)

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": None if self.prototypes is None else {m: p.cpu() for m, p in self.prototypes.items()}}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        saved = state.get("prototypes")
        self.prototypes = None if saved is None else {m: p.to(next(model.parameters()).device)
                                                     for m, p in saved.items()}

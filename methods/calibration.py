"""`dlc`: decision-layer calibration, mmbench's own reading of Ma & Chen (arXiv 2510.14411).

The paper finds the fused decision layer biased toward audio and recommends adaptive,
capability-proportional weights at the decision layer; it gives no algorithm. This is
ours: train with the `base` method's hooks (joint training by default; any method whose
outputs carry per-modality logits), then, on the validation split only, with the trained
model frozen,
  1. fit a temperature T_m per modality (NLL of softmax(u_m / T_m); u_m = the modality's
     half of the fusion layer, W_m f_m + b/2),
  2. weigh each class by relative capability: acc_mc = (correct_mc + 1) / (n_c + 2)
     (Laplace: a class without validation samples gets 1/2 for both), w_mc = acc_mc / sum_m acc_mc,
  3. predict z_c = sum_m w_mc u_mc / T_m.
`weights=global` uses one weight per modality; `weights=learned` fits w >= 0 and a class
bias by cross-entropy on validation (L-BFGS), starting from the class weights.
Guards, because validation is small (79 clips on the `ci` suite, ~13 per class): temperatures
are searched in [1/10, 10] (a chance-level modality is damped, not erased by T = 148), weights
are clamped to [0.1, 0.9], and a calibration that makes the validation decision worse than
the uncalibrated one (higher NLL, each at its best temperature) is not used: the run keeps the
base's decision and logs `fell_back = 1`. Before these guards one `ci` seed in twenty lost 10
points of test accuracy: a near-chance visual branch (T -> 148) and one class with audio weight
0.36 against 0.92 for the others shrank that class's audio score, and the best-on-validation
checkpoint (epoch 0) was calibrated into 67 % validation accuracy from 77 %. Its raw NLL had
fallen (the weights halve the logit scale); at each decision's best temperature it rose.
Diagnostics (docs/methods.md), for every run of any method: D1-D4 in each epoch and run row, D1
also per class (`d1_class_<c>` = ||W_a[c]|| / ||W_v[c]||); D5, the per-class capability gap
against separately trained `unimodal` runs of the same seed, is computed by `mmbench report`
from the stored predictions (a run row must not depend on which other runs exist).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import nn

from mmbench.config import ConfigError, RunConfig
from mmbench.data import Batch, Split
from mmbench.method import Method, RunContext
from mmbench.methods.joint import OGM_GE_RECIPE
from mmbench.registry import METHODS, register_method
from mmbench.train.models import AVModel, Outputs

TEMPERATURE_BOUNDS = (0.1, 10.0)
WEIGHT_BOUNDS = (0.1, 0.9)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
                    ) -> float:
    """argmin_T NLL(softmax(logits / T), y) over T in `bounds` (searched on log T)."""
    logits, y = logits.double(), y.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), y))

    return math.exp(minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                                    options={"xatol": 1e-6}).x)


def capability_weights(scaled: list[torch.Tensor], y: torch.Tensor, num_classes: int,
                       per_class: bool = True) -> torch.Tensor:
    """(modalities, classes) weights from Laplace-smoothed accuracies, summing to 1 over modalities."""
    correct = torch.stack([(z.argmax(1) == y).double() for z in scaled])  # (M, N)
    if per_class:
        one_hot = F.one_hot(y, num_classes).double()  # (N, C)
        accuracy = (correct @ one_hot + 1) / (one_hot.sum(0) + 2)
    else:
        accuracy = ((correct.sum(1) + 1) / (len(y) + 2))[:, None].expand(-1, num_classes)
    return (accuracy / accuracy.sum(0)).clamp(*WEIGHT_BOUNDS).float()


@dataclass
class Calibration:
    temperatures: tuple[float, float]
    weights: torch.Tensor  # (2, C)
    bias: torch.Tensor  # (C,)
    fell_back: bool = False  # worse than the uncalibrated decision on validation: not used

    def scaled(self, logits_a: torch.Tensor, logits_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_a / self.temperatures[0], logits_v / self.temperatures[1]

    def fused(self, logits_a: torch.Tensor, logits_v: torch.Tensor) -> torch.Tensor:
        scaled_a, scaled_v = self.scaled(logits_a, logits_v)
        w = self.weights.to(logits_a.device)
        return w[0] * scaled_a + w[1] * scaled_v + self.bias.to(logits_a.device)


def learn_weights(scaled: list[torch.Tensor], y: torch.Tensor, init: torch.Tensor,
                  steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """w >= 0 (softplus) and a class bias minimising validation cross-entropy, from `init`."""
    raw = torch.log(torch.expm1(init.double().clamp_min(1e-4))).requires_grad_()
    bias = torch.zeros(init.shape[1], dtype=torch.double, requires_grad=True)
    stacked = torch.stack([z.double() for z in scaled])  # (M, N, C)
    optimizer = torch.optim.LBFGS([raw, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy((F.softplus(raw)[:, None, :] * stacked).sum(0) + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return F.softplus(raw).detach().clamp(*WEIGHT_BOUNDS).float(), bias.detach().float()


def worse_than(uncalibrated: torch.Tensor, calibrated: torch.Tensor, y: torch.Tensor) -> bool:
    """True when the calibrated decision has a higher validation NLL than the uncalibrated one.

    Each NLL is taken at its own best scale (one fitted temperature): the capability weights sum to
    1 over modalities, so the calibrated logits are about half the scale of the uncalibrated sum, and
    comparing raw NLLs would refuse calibrations that only changed the scale."""
    def nll(logits: torch.Tensor) -> float:
        return float(F.cross_entropy(logits.double() / fit_temperature(logits, y), y.long()))

    return nll(calibrated) > nll(uncalibrated)


def fit_calibration(logits_a: torch.Tensor, logits_v: torch.Tensor, y: torch.Tensor, num_classes: int,
                    variant: str = "class", uncalibrated: torch.Tensor | None = None) -> Calibration:
    """Fit on validation; with the base's own fused `uncalibrated` logits, a calibration that is
    worse on them is returned with `fell_back=True`."""
    temperatures = (fit_temperature(logits_a, y), fit_temperature(logits_v, y))
    scaled = [logits_a / temperatures[0], logits_v / temperatures[1]]
    weights = capability_weights(scaled, y, num_classes, per_class=variant != "global")
    bias = torch.zeros(num_classes)
    if variant == "learned":
        weights, bias = learn_weights(scaled, y, weights)
    calibration = Calibration(temperatures, weights, bias)
    if uncalibrated is not None and worse_than(uncalibrated, calibration.fused(logits_a, logits_v), y):
        calibration.fell_back = True
    return calibration


@register_method
class DecisionLayerCalibration(Method):
    name = "dlc"
    version = 2  # 2: bounded temperatures and weights, fall back when validation gets worse
    description = ("Joint training, then decision-layer calibration on validation: per-modality "
                   "temperatures and per-class capability weights (mmbench's reading of the paper).")
    citation = "After Ma, Chen. Revisit Modality Imbalance at the Decision Layer. arXiv 2510.14411 " \
               "(the paper has no algorithm; this calibration is mmbench's own)"
    hparams = {"base": "joint", "weights": "class", "during_training": False}
    choices = {"weights": ("class", "global", "learned")}
    help = {
        "base": "the method whose training is calibrated (its default hyperparameters)",
        "weights": "class: per-class capability weights; global: one per modality; learned: fitted by CE",
        "during_training": "also calibrate after every epoch and use it for that epoch's evaluation",
    }
    fusions = ("concat", "sum")
    modality_logits = "late-fusion"  # the base's per-modality logits, scaled and weighted
    # The calibration is post-hoc: its official profile is the joint training it starts from.
    profiles = {"official": OGM_GE_RECIPE}

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        bases = [m for m in METHODS.names() if m != cls.name]
        if cfg.hparams["base"] not in bases:
            raise ConfigError(f"base={cfg.hparams['base']!r} is not allowed; choices: {', '.join(bases)}")
        METHODS.get(cfg.hparams["base"]).check_config(cfg)

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        base_cls = METHODS.get(self.hp["base"])
        base_hparams = {**base_cls.hparams, **base_cls.dataset_hparams.get(ctx.cfg.dataset, {})}
        self.base: Method = base_cls(dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, hparams=base_hparams)))
        self.calibration: Calibration | None = None
        self.last: Calibration | None = None

    # Training is entirely the base method's.
    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        return self.base.build(model, ctx)

    def parameters(self, model: nn.Module, ctx: RunContext) -> Any:
        return self.base.parameters(model, ctx)

    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        return self.base.train_step(model, batch, optimizer, ctx)

    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        self.base.on_epoch_start(model, ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.base.load_state_dict(state["base"], model)

    def fit(self, model: nn.Module, split: Split, ctx: RunContext) -> Calibration:
        calibration, self.calibration = self.calibration, None  # fit on the base's own predictions
        parts = ctx.infer(model, split, lambda batch: self.predict(model, batch, ctx))
        self.calibration = calibration
        if "logits_a" not in parts or "logits_v" not in parts:
            raise ValueError(f"dlc needs per-modality logits, and base={self.hp['base']} gives none")
        return fit_calibration(parts["logits_a"], parts["logits_v"], split.y, ctx.num_classes,
                               self.hp["weights"], uncalibrated=parts["logits"])

    def on_epoch_end(self, model: nn.Module, ctx: RunContext) -> None:
        self.base.on_epoch_end(model, ctx)
        self.last = self.fit(model, ctx.val, ctx)  # logged every epoch, used only if asked
        self.calibration = self.last if self.hp["during_training"] and not self.last.fell_back else None

    def calibrate(self, model: nn.Module, val: Split, ctx: RunContext) -> None:
        self.last = self.fit(model, val, ctx)
        self.calibration = None if self.last.fell_back else self.last

    def predict(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        out = self.base.predict(model, batch, ctx)
        if self.calibration is None:
            return out
        # Each modality keeps its own (temperature-scaled) prediction, so per-modality accuracy
        # and the D4 disagreements stay those of the trained model; only the decision changes.
        scaled_a, scaled_v = self.calibration.scaled(out.logits_a, out.logits_v)
        return Outputs(self.calibration.fused(out.logits_a, out.logits_v), scaled_a, scaled_v,
                       out.feat_a, out.feat_v)

    def diagnostics(self) -> dict[str, float]:
        if self.last is None:
            return self.base.diagnostics()
        w = self.last.weights
        return {**self.base.diagnostics(), "t_a": self.last.temperatures[0], "t_v": self.last.temperatures[1],
                "w_a": float(w[0].mean()), "w_v": float(w[1].mean()), "fell_back": float(self.last.fell_back)}

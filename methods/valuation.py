"""`sample-valuation` and `modality-valuation`: re-sampling by modality valuation (Wei, Feng, Wang, Hu, CVPR 2024).

After every epoch from `warmup - 1` on, each training row is valued with the model in eval mode, on the training
augmentation (the release values a second loader over the training list, with the training transform): the
fused prediction, the prediction with the visual features zeroed after the encoder (audio alone) and the one
with the audio features zeroed (visual alone) give v_all = fused_value if the fused prediction is right else 0,
v_a, v_v = 1 if right else 0, and the contributions
    phi_a = (v_a + v_all - v_v) / 2,    phi_v = (v_v + v_all - v_a) / 2.
The next epoch trains on every row once plus copies, each copy keeping one modality (the other's features zeroed
after its encoder), all shuffled together (an epoch plan with keep-masks), with CE on the fused logits:
- `sample-valuation`: per row, copies(phi_a) copies on audio alone and copies(phi_v) on visual alone, where
  copies(phi) = 1 if 0.4 < phi < 1, 2 if -0.1 < phi < 0.4, 3 if phi < -0.1, else 0.
- `modality-valuation`: the mean contributions over int(part_ratio N) rows drawn with replacement give the gaps
  gap_m = 1 - mean phi_m; d = f(|gap_a - gap_v| * 2/3) (linear: times alpha; square: ^1.5 times alpha; tanh:
  tanh of it times alpha); int(d N) rows drawn uniformly with replacement are added, each on the modality with the
  larger gap alone.
Epochs before `warmup` are plain joint training.

As the official code (GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation @7ed12b0): `code/sample_level.py`
lines 75-153 (the values, fused 2.0, from the model after each epoch >= warmup - 1 on the training loader) and
184-206, 321-333 (warm-up, then the re-sampled loader); `code/modality_level.py` lines 142-177 (the subset mean);
`code/datasets/dataloader.py` lines 150-186 (sample-level copies; drop 2 = visual removed) and 297-316
(modality-level copies); `code/models/models.py` lines 61-86 (a removed modality's pooled features zeroed).
BalanceBenchmark's version differs (values 0/1 for the fused prediction too, `fused_value=1`; the absent modality
zeroed at the input; its prediction cache reused across batches, not copied here; two copies per drawn row at
the modality level).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmbench.data import PlannedBatch, plan_batches
from mmbench.method import Method, Outputs, RunContext
from mmbench.registry import register_method

#: `sample_level.py` / `modality_level.py` arguments (lines 40-63): Adam lr 5e-5 with L2 weight decay 1e-4 (lines
#: 282-294), StepLR(30, 0.1), 60 epochs, batch 64, warm-up 5; three frames (`dataloader.py` line 85) at 224 px.
#: Kinetics-Sounds only: the release has no CREMA-D code.
OFFICIAL = {"kinetics-sounds": {"optimizer": "adam", "lr": 5e-5, "weight_decay": 1e-4, "lr_step": 30,
                                "lr_gamma": 0.1, "epochs": 60, "batch_size": 64, "frames": 3, "image_size": 224}}

DIFFERENCE = {
    "linear": lambda x, alpha: x * alpha,
    "square": lambda x, alpha: x**1.5 * alpha,
    "tanh": lambda x, alpha: math.tanh(x * alpha),
}


def contributions(correct: torch.Tensor, correct_a: torch.Tensor, correct_v: torch.Tensor,
                  fused_value: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi_a, phi_v) per row from whether the fused, audio-alone and visual-alone predictions are right."""
    v_all, v_a, v_v = correct.double() * fused_value, correct_a.double(), correct_v.double()
    return (v_a + v_all - v_v) / 2, (v_v + v_all - v_a) / 2


def copies(phi: torch.Tensor) -> torch.Tensor:
    """Copies of a row trained on one modality alone, from that modality's contribution (bounds exclusive)."""
    count = torch.zeros_like(phi, dtype=torch.long)
    count[(phi > 0.4) & (phi < 1)] = 1
    count[(phi > -0.1) & (phi < 0.4)] = 2
    count[phi < -0.1] = 3
    return count


def resampling_share(gap_a: float, gap_v: float, alpha: float, func: str) -> float:
    """d: the share of the training split added as copies on the modality with the larger gap."""
    return DIFFERENCE[func](abs(gap_a - gap_v) / 3 * 2, alpha)


class _Valuation(Method):
    version = 1
    hparams = {"warmup": 5, "fused_value": 2.0}
    help = {
        "warmup": "epochs of joint training before the first re-sampled epoch",
        "fused_value": "value of a right fused prediction (2 as released; BalanceBenchmark: 1)",
    }
    profiles = {"official": OFFICIAL}

    def value(self, model: nn.Module, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi_a, phi_v) of every training row, in eval mode on the training augmentation."""
        def forward(batch):
            feat_a, feat_v = model.audio_encoder(batch.audio), model.visual_encoder(batch.visual)
            return Outputs(model.fusion(feat_a, feat_v).logits, model.fusion(feat_a, torch.zeros_like(feat_v)).logits,
                           model.fusion(torch.zeros_like(feat_a), feat_v).logits)

        parts = ctx.infer(model, ctx.train, forward, augment=True)
        y = ctx.train.y.cpu()
        phi_a, phi_v = contributions(*(parts[k].argmax(1) == y for k in ("logits", "logits_a", "logits_v")),
                                     fused_value=self.hp["fused_value"])
        ctx.log(valuation_phi_a=phi_a.mean(), valuation_phi_v=phi_v.mean())
        return phi_a, phi_v

    def epoch_plan(self, model: nn.Module, ctx: RunContext) -> list[PlannedBatch] | None:
        if ctx.epoch < self.hp["warmup"]:
            return None
        n = len(ctx.train)
        extra, keep_a_extra = self.extra_rows(*self.value(model, ctx), ctx)
        rows = torch.cat([torch.arange(n), extra])
        keep_a = torch.cat([torch.ones(n, dtype=torch.bool), keep_a_extra])
        keep_v = torch.cat([torch.ones(n, dtype=torch.bool), ~keep_a_extra])
        order = torch.randperm(len(rows), generator=ctx.generator("order"))
        ctx.log(valuation_added=len(extra) / n, valuation_audio_alone=keep_a_extra.double().mean() if len(extra) else 0)
        return plan_batches(rows[order], ctx.cfg.batch_size, keep_a=keep_a[order], keep_v=keep_v[order])

    def extra_rows(self, phi_a: torch.Tensor, phi_v: torch.Tensor,
                   ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The copies' rows and, per copy, whether it keeps audio (else visual); the other modality is removed."""
        raise NotImplementedError


@register_method
class SampleValuation(_Valuation):
    name = "sample-valuation"
    description = ("Sample-level modality valuation: each training row's per-modality contributions (Shapley "
                   "values of fused and single-modality correctness) decide how many extra copies of it train "
                   "on one modality alone in the next epoch (an epoch plan).")
    citation = ("Wei, Feng, Wang, Hu. Enhancing Multimodal Cooperation via Sample-level Modality Valuation. "
                "CVPR 2024")

    def extra_rows(self, phi_a: torch.Tensor, phi_v: torch.Tensor,
                   ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        count_a, count_v = copies(phi_a), copies(phi_v)
        rows = torch.arange(len(phi_a))
        # row by row, as the release appends them: its audio-alone copies, then its visual-alone copies
        per_row = torch.stack([count_a, count_v], dim=1).flatten()
        keeps_audio = torch.tensor([True, False]).repeat(len(phi_a))
        return rows.repeat_interleave(2).repeat_interleave(per_row), keeps_audio.repeat_interleave(per_row)


@register_method
class ModalityValuation(_Valuation):
    name = "modality-valuation"
    description = ("Modality-level valuation: the modalities' mean contributions on a random part of the "
                   "training split set how many random rows are added, each training the less contributing "
                   "modality alone, in the next epoch (an epoch plan).")
    citation = ("Wei, Feng, Wang, Hu. Enhancing Multimodal Cooperation via Sample-level Modality Valuation. "
                "CVPR 2024")
    hparams = {**_Valuation.hparams, "part_ratio": 0.2, "alpha": 1.0, "func": "linear"}
    choices = {"func": tuple(DIFFERENCE)}
    help = {
        **_Valuation.help,
        "part_ratio": "share of the training split (drawn with replacement) whose mean contributions give the gaps",
        "alpha": "scale of the re-sampled share",
        "func": "linear, square or tanh: how the gap difference becomes the re-sampled share",
    }

    def extra_rows(self, phi_a: torch.Tensor, phi_v: torch.Tensor,
                   ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        n, g = len(phi_a), ctx.generator("method")
        part = torch.randint(n, (max(1, int(n * self.hp["part_ratio"])),), generator=g, device=g.device).cpu()
        gap_a, gap_v = 1.0 - float(phi_a[part].mean()), 1.0 - float(phi_v[part].mean())
        share = resampling_share(gap_a, gap_v, self.hp["alpha"], self.hp["func"])
        extra = torch.randint(n, (int(share * n),), generator=g, device=g.device).cpu()
        ctx.log(valuation_gap_a=gap_a, valuation_gap_v=gap_v)
        return extra, torch.full((len(extra),), gap_a > gap_v)

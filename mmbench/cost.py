"""What a run's training costs: encoder passes per training sample, counted, and FLOPs, estimated.

Methods differ in cost (DGL backpropagates twice, AGM runs extra forwards, ReconBoost trains learners in
turn), so a report that compares their accuracy shows their cost next to it. The engine counts, while
it trains (never while it evaluates val and test), the samples that pass through each encoder forwards
and backwards, in Python (no tensor is read on the host). Divided by the samples trained on, that gives
`cost_fwd_a`, `cost_fwd_v`, `cost_bwd_a`, `cost_bwd_v`: 1, 1, 1, 1 for joint training. The train FLOPs
per sample weight each encoder's forward and backward FLOPs for one sample (counted once per run by
`torch.utils.flop_counter` on the meta device, without computing anything) by those counts. The fusion
head, the losses and the optimiser are left out: next to a ResNet-18 they are below 0.1 %.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmbench.models import Encoder

COST_COLUMNS = ("cost_fwd_a", "cost_fwd_v", "cost_bwd_a", "cost_bwd_v", "train_gflops_per_sample")


def _modality(x: torch.Tensor) -> str:
    """Audio enters an encoder as (B, 1, F, T), visual as (B, T, 3, H, W)."""
    return "v" if x.ndim == 5 else "a"


class PassCounter:
    """Counts the samples each encoder of a model sees forwards and backwards while it is on."""

    def __init__(self) -> None:
        self.samples: Counter[str] = Counter()
        self.on = False
        self.inputs: dict[str, tuple[int, ...]] = {}  # one sample's input shape per modality
        self.encoders: dict[str, nn.Module] = {}

    def attach(self, model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, Encoder):
                module.register_forward_hook(self._forward_hook)

    @torch.compiler.disable  # a compiled encoder runs its graph, then this hook eagerly
    def _forward_hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if not self.on:
            return
        modality, batch = _modality(args[0]), args[0].shape[0]
        self.inputs.setdefault(modality, tuple(args[0].shape[1:]))
        self.encoders.setdefault(modality, module)
        self.samples[f"fwd_{modality}"] += batch
        if output.requires_grad:
            output.register_hook(lambda grad: self._count(f"bwd_{modality}", batch))

    def _count(self, key: str, batch: int) -> None:
        self.samples[key] += batch

    def columns(self, trained_samples: int) -> dict[str, float]:
        """Passes per trained sample, and the estimated train GFLOPs per sample."""
        per = {f"cost_{k}_{m}": self.samples[f"{k}_{m}"] / trained_samples if trained_samples else float("nan")
               for k in ("fwd", "bwd") for m in "av"}
        flops = 0.0
        for m, module in self.encoders.items():
            forward, backward = encoder_flops(module, self.inputs[m])
            flops += forward * per[f"cost_fwd_{m}"] + backward * per[f"cost_bwd_{m}"]
        return {**per, "train_gflops_per_sample": flops / 1e9 if self.encoders else float("nan")}


def encoder_flops(encoder: Encoder, sample_shape: tuple[int, ...]) -> tuple[float, float]:
    """(forward, backward) FLOPs of `encoder` for one sample of `sample_shape`, on the meta device."""
    # A copy without the hooks and the compiled graph; in eval mode, as batch norm needs 2 values in training.
    meta = Encoder(copy.deepcopy(encoder.backbone)).to("meta").eval()
    x = torch.zeros((1, *sample_shape), device="meta")
    with FlopCounterMode(display=False) as forward:
        out = meta(x)
    with FlopCounterMode(display=False) as both:
        meta(x).sum().backward()
    del out
    return float(forward.get_total_flops()), float(both.get_total_flops() - forward.get_total_flops())

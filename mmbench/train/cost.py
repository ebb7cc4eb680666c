"""What a run's training costs: encoder passes per training sample, counted, and FLOPs, estimated.

Methods differ in cost (DGL backpropagates twice, AGM runs extra forwards, ReconBoost trains learners in
turn), so a report that compares their accuracy shows their cost next to it. The engine counts, while
it trains (never while it evaluates val and test), the samples that pass through each encoder forwards
and backwards, in Python (no tensor is read on the host). Divided by the samples trained on, that gives
`cost_fwd_a`, `cost_fwd_v`, `cost_bwd_a`, `cost_bwd_v`: 1, 1, 1, 1 for joint training. The train FLOPs
per sample weight each encoder's forward and backward FLOPs for one sample by those counts. They are
counted once per run on the meta device (shapes only, nothing computed), as `torch.utils.flop_counter`
counts them: 2 FLOPs per multiply-add of the convolutions and linear layers, forwards; backwards the
gradient of the weights and, where the layer's input needs one, of the input. An encoder with other
parametrised layers is handed to `torch.utils.flop_counter` itself (which costs a run ~1.5 s of imports).
The fusion head, the losses and the optimiser are left out: next to a ResNet-18 they are below 0.1 %.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from mmbench.train.models import Encoder

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

    def attach(self, model: nn.Module, compiled: bool = False) -> None:
        # torch.compiler.disable imports dynamo (~1.5 s): only where encoders are compiled, so that a compiled
        # encoder runs its graph and then this hook eagerly
        hook = torch.compiler.disable(self._forward_hook) if compiled else self._forward_hook
        for module in model.modules():
            if isinstance(module, Encoder):
                module.register_forward_hook(hook)

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
    if any(_needs_torch_counter(m) for m in meta.modules()):
        return _torch_counted_flops(meta, x)
    totals = {"forward": 0, "backward": 0}

    def count(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        forward, weight_grad = _layer_flops(module, args[0], out)
        totals["forward"] += forward
        totals["backward"] += (forward if args[0].requires_grad else 0) + (
            weight_grad if module.weight.requires_grad else 0)

    for module in meta.modules():
        if isinstance(module, _COUNTED):
            module.register_forward_hook(count)
    meta(x)
    return float(totals["forward"]), float(totals["backward"])


_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_UNCOUNTED = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # elementwise: torch counts none


def _needs_torch_counter(module: nn.Module) -> bool:
    """A leaf layer with parameters whose FLOPs the analytic count does not know."""
    leaf = next(module.children(), None) is None
    has_params = next(module.parameters(recurse=False), None) is not None
    return leaf and has_params and not isinstance(module, _COUNTED + _UNCOUNTED)


def _layer_flops(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(forward, weight-gradient) FLOPs of a convolution or linear layer; the input's gradient costs
    the forward's."""
    if isinstance(module, nn.Linear):
        forward = 2 * (x.numel() // module.in_features) * module.in_features * module.out_features
        return forward, forward
    c_out, c_in_per_group, *kernel = module.weight.shape
    forward = 2 * x.shape[0] * math.prod(out.shape[2:]) * c_out * c_in_per_group * math.prod(kernel)
    return forward, forward * module.groups  # torch counts the weight gradient over all input channels


def _torch_counted_flops(meta: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        out = meta(x)
    with FlopCounterMode(display=False) as both:
        meta(x).sum().backward()
    del out
    return float(forward.get_total_flops()), float(both.get_total_flops() - forward.get_total_flops())

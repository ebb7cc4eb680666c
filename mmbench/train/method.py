"""The method contract: a method is a registered class with a few hooks.

Every hook has a default, and the defaults together are plain joint training: build the
audio-visual model, forward, cross-entropy on the fused logits, backward, step. A method
overrides only what it changes. The engine (engine.py) calls the hooks and knows no
method by name.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import ConfigError, RunConfig
from mmbench.data import Batch, PlannedBatch, Split, plan_batches  # noqa: F401  (plan_batches: for plugins)
from mmbench.registry import Plugin
from mmbench.train.models import FUSIONS, AVModel, Outputs

#: Independent random streams of a run, as generators in `RunContext.generators`. Seed s
#: gives every method the same "order" and "augment" streams and the same encoder init
#: (seeded from `derive_seed(s, "init")`): common random numbers. "method" is the method's own.
RNG_PURPOSES = ("order", "augment", "method")


#: What a method's `Outputs.logits_a` and `logits_v` are (`Method.modality_logits`), recorded with each run
#: (column `modality_logits`): the per-modality accuracies, rho and the decision-layer diagnostics read them.
MODALITY_LOGITS = {
    "fusion-slice": "each modality's term of a fusion head that is linear in each modality: logits_a + logits_v "
                    "is the fused prediction (with a full bias in each where a method says so)",
    "late-fusion": "one head per modality; the fused prediction is a weighted sum of their logits",
    "auxiliary-head": "per-modality heads trained beside the fused prediction, which does not use them",
    "separate-learner": "a separate model per modality; the fused prediction combines their outputs",
    "single-modality": "one modality trained alone; the other modality has no logits",
    "none": "the fusion head does not split by modality; there are no per-modality logits",
}


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, independent of every other purpose's seed."""
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, tag]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class RunContext:
    """What hooks may read about the run in progress, and where they log diagnostics."""

    cfg: RunConfig
    num_classes: int
    device: torch.device
    generators: dict[str, torch.Generator]
    steps_per_epoch: int = 0
    epoch: int = 0
    step: int = 0
    #: The run's optimiser, for methods that grow the model (`optimizer.add_param_group`).
    optimizer: torch.optim.Optimizer | None = None
    #: The training split (e.g. `ctx.train.subset(rows)` for class prototypes from some of its rows).
    train: Split | None = None
    #: The validation split, for methods that fit something on it during training.
    val: Split | None = None
    #: infer(model, split, forward=None, features=False, augment=False) -> {"logits", "logits_a",
    #: "logits_v", "feat_norm_a", "feat_norm_v"}: the model (or `forward(batch) -> Outputs`) over a
    #: split in eval mode, concatenated on the CPU (set by the engine). `features=True` adds the
    #: per-sample features "feat_a", "feat_v"; `augment=True` applies the training augmentation
    #: (drawn from the "method" stream) instead of the evaluation transform. For example:
    #:     some = ctx.train.subset(rows)
    #:     parts = ctx.infer(model, some, features=True, augment=True)
    #:     centre_of_class_c = parts["feat_a"][some.y == c].mean(0)
    infer: Callable[..., dict[str, torch.Tensor]] | None = None
    #: batches(split, batch_size=None, augment=False, generator=None) -> Iterator[Batch]: the split's
    #: batches in order (of `eval_batch_size` by default), on the device and transformed as the model sees
    #: them (set by the engine): the evaluation transform, or with `augment=True` the training augmentation
    #: drawn from `generator` (default: the "method" stream). For a method's own passes with gradients,
    #: e.g. a hypergradient on a few held-out rows:
    #:     batch = next(ctx.batches(ctx.val.subset(rows), len(rows)))
    #:     loss = F.cross_entropy(model(batch.audio, batch.visual).logits, batch.y)
    batches: Callable[..., Iterator[Batch]] | None = None
    #: load_run(key) -> nn.Module: the model of the finished run the method requires under `key` (see
    #: `Method.requires`), with the weights that run selected (best on validation), on the device, in eval
    #: mode and frozen (set by the engine). Its training passes count in this run's cost. For example:
    #:     def build(self, model, ctx):
    #:         self.teachers = {m: ctx.load_run(f"teacher_{m[0]}") for m in ("audio", "visual")}
    #:         return model
    #: (a dict, not module attributes: a model's submodules would be trained, checkpointed and switched to
    #: train mode with it).
    load_run: Callable[[str], nn.Module] | None = None
    _step_logs: dict[str, list[float | torch.Tensor]] = field(default_factory=lambda: defaultdict(list))

    @property
    def hp(self) -> dict[str, Any]:
        return self.cfg.hparams

    def generator(self, purpose: str = "method") -> torch.Generator:
        return self.generators[purpose]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when `bf16` is on there (true, or auto in the benchmark profile); wrap
        forward and loss, not backward."""
        if self.cfg.uses("bf16", self.device.type):
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def log(self, **values: float | torch.Tensor) -> None:
        """Per-step diagnostics; their mean over the epoch becomes an epoch-row column. Tensors stay
        on the device until the epoch ends (a host read per step would be a GPU sync)."""
        for key, value in values.items():
            self._step_logs[key].append(value.detach() if isinstance(value, torch.Tensor) else float(value))

    def pop_epoch_logs(self) -> dict[str, float]:
        means = {k: float(np.mean(_to_floats(v))) for k, v in self._step_logs.items() if v}
        self._step_logs.clear()
        return means


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> None:
    """Forget what `optimizer` accumulated for `params` (momentum buffers, Adam moments and step counts),
    so that their next step is a fresh optimiser's first, e.g. at the start of a training phase."""
    for param in params:
        optimizer.state.pop(param, None)


def _to_floats(values: list[float | torch.Tensor]) -> list[float]:
    """One host read for all the epoch's tensor values (float32 -> float: exact, as float(t) per step)."""
    tensors = [v.reshape(()) for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).double().tolist() if tensors else [])
    return [next(read) if isinstance(v, torch.Tensor) else v for v in values]


class Method(Plugin):
    """Base class of methods; register a subclass with `@register_method`."""

    #: Hyperparameters with defaults; the default's type is the type --set must parse to.
    hparams: ClassVar[dict[str, Any]] = {}
    #: Per-dataset hyperparameter defaults where the paper used other values.
    dataset_hparams: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Run-config overrides per profile and dataset: {"official": {"cremad": {...}}}.
    profiles: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    #: Fusion heads the method is defined for (None: any).
    fusions: ClassVar[tuple[str, ...] | None] = None
    #: A reference point rather than a contender (e.g. one modality alone): reports show it but do
    #: not mark it best.
    reference: ClassVar[bool] = False
    #: What `mmbench check`'s suites need on top of their settings for this method to converge (e.g.
    #: {"epochs": 20}), and "ci_seeds": how many seeds a CI run draws when its seeds spread widely.
    check_suite: ClassVar[dict[str, Any]] = {}
    #: What `Outputs.logits_a/v` are, a key of MODALITY_LOGITS (None: what the fusion head gives:
    #: fusion-slice for concat and sum, none for film and gated). Override `logits_kind` where it
    #: depends on a hyperparameter.
    modality_logits: ClassVar[str | None] = None
    #: Finished runs the method loads (`ctx.load_run(key)`), by key: the method and the hyperparameters
    #: (or core keys) that differ from this run's config, e.g. a teacher per modality:
    #:     requires = {"teacher_a": {"method": "unimodal", "modality": "audio"},
    #:                 "teacher_v": {"method": "unimodal", "modality": "visual"}}
    #: A required run has this run's seed, dataset, profile and core settings, with the given method and its
    #: hyperparameters (defaults but for those given). `mmbench run` and `sweep` (every backend) run the
    #: required runs first, reuse finished ones, and fail a run whose required run failed. Override
    #: `required_runs` where what is required depends on a hyperparameter.
    requires: ClassVar[dict[str, dict[str, Any]]] = {}
    #: False for a method without training of its own (e.g. an ensemble of required runs): its run
    #: builds the model, evaluates it once (one epoch row) and stores it; no optimiser is built.
    trains: ClassVar[bool] = True

    def __init__(self, ctx: RunContext) -> None:
        self.hp = ctx.cfg.hparams

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raise ConfigError for a combination the method is not defined for."""
        if cls.fusions is not None and cfg.fusion not in cls.fusions:
            raise ConfigError(
                f"method {cls.name} is defined for fusion {' or '.join(cls.fusions)}, "
                f"not fusion={cfg.fusion}; use --set fusion={cls.fusions[0]}"
            )

    @classmethod
    def required_runs(cls, cfg: RunConfig) -> dict[str, dict[str, Any]]:
        """The runs this run loads, as `requires` (by default `requires` itself)."""
        return cls.requires

    @classmethod
    def logits_kind(cls, cfg: RunConfig) -> str:
        """The MODALITY_LOGITS key of this method's per-modality logits under `cfg`."""
        if cls.modality_logits is not None:
            return cls.modality_logits
        return "fusion-slice" if FUSIONS[cfg.fusion].decomposes else "none"

    # -- model and optimiser -------------------------------------------------------------
    def build(self, model: AVModel, ctx: RunContext) -> nn.Module:
        """The model to train. Called under the "method" random stream, after the shared
        backbone was built from the "init" stream, so new parameters shift no shared stream."""
        return model

    def parameters(self, model: nn.Module, ctx: RunContext) -> Iterable[Any]:
        """Parameters (or parameter groups) handed to the optimiser. Called again on resume,
        after `load_state_dict`: a method that added groups during training (through
        `ctx.optimizer`) returns the same groups in the same order, so the saved optimiser
        state fits."""
        return model.parameters()

    def extra_optimizers(self, model: nn.Module, ctx: RunContext) -> dict[str, torch.optim.Optimizer]:
        """Optimisers besides the run's own (e.g. one for an auxiliary classifier with its own rule), by
        name, built once the model is (and again on resume, after `load_state_dict`). The engine saves
        and restores their state with every checkpoint; the method keeps them to step in `train_step`:
            def extra_optimizers(self, model, ctx):
                self.aux_optimizer = torch.optim.Adam(model.aux.parameters(), lr=1e-3)
                return {"aux": self.aux_optimizer}
        Their parameters must not be in `parameters()` as well."""
        return {}

    # -- one training step ------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   ctx: RunContext) -> tuple[Outputs, torch.Tensor]:
        """The whole training step. Methods with several optimiser steps per batch override it."""
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            out = self.forward(model, batch, ctx)
            loss = self.loss(out, batch, ctx)
        loss.backward()
        self.after_backward(model, out, batch, ctx)
        optimizer.step()
        return out, loss

    def forward(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        return model(batch.audio, batch.visual)

    def loss(self, out: Outputs, batch: Batch, ctx: RunContext) -> torch.Tensor:
        return F.cross_entropy(out.logits, out.targets(batch.y))

    def after_backward(self, model: nn.Module, out: Outputs, batch: Batch, ctx: RunContext) -> None:
        """Gradient surgery between backward and the optimiser step."""

    # -- epochs, inference, post-hoc ---------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, ctx: RunContext) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, ctx: RunContext) -> None:
        pass

    def epoch_plan(self, model: nn.Module, ctx: RunContext) -> list[PlannedBatch] | None:
        """The epoch's training steps, asked for after `on_epoch_start`; None (the default): one pass over
        `ctx.train` in the seeded shuffled order. A plan gives each step's rows of `ctx.train` in order (rows
        may repeat or be left out) and, optionally, per row whether it keeps each modality: the engine zeroes
        the features of a row's removed modality after its encoder, in every forward pass of that step (the
        model must keep its encoders as `audio_encoder` and `visual_encoder`). `ctx.steps_per_epoch` becomes
        the plan's length; frames are drawn from the "order" stream, augmentation from "augment", as in the
        default pass. For example, every row once more without its visual features, shuffled in:
            def epoch_plan(self, model, ctx):
                n, g = len(ctx.train), ctx.generator("method")
                rows, keep_v = torch.arange(n).repeat(2), torch.arange(2 * n) < n
                order = torch.randperm(2 * n, generator=g, device=g.device).cpu()
                return plan_batches(rows[order], ctx.cfg.batch_size, keep_v=keep_v[order])
        """
        return None

    def predict(self, model: nn.Module, batch: Batch, ctx: RunContext) -> Outputs:
        """Inference (model in eval mode, no gradients): never perturbed, never uses labels."""
        return model(batch.audio, batch.visual)

    def calibrate(self, model: nn.Module, val: Split, ctx: RunContext) -> None:
        """Post-hoc fitting on the validation split, after training."""

    def diagnostics(self) -> dict[str, float]:
        """Per-epoch quantities (beyond those logged with ctx.log) for the epoch row."""
        return {}

    # -- state that must survive a resume ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore method state and grow `model` to the saved shape; the engine loads the
        weights afterwards. `model` may be a freshly built one (the best-on-val model)."""

"""One training run: seeding, the loop with method hooks, evaluation, checkpoints, results.

    for epoch:                          [scheduler.step() if lr_step_at=epoch_start]; method.on_epoch_start
        for batch in train (seeded order): method.train_step = forward, loss, backward,
                                           after_backward, optimizer.step
        [scheduler.step() if lr_step_at=epoch_end]; method.on_epoch_end
        evaluate val and test -> epoch row; checkpoint (last, and best-on-val)
    method.calibrate(model, val) for the final and the best-on-val model -> test metrics
    write results ([the selected weights, for a run that another run loads], epochs, predictions, the run row)

A method may load finished runs it requires (`ctx.load_run`, mmbench/train/dependencies.py); one without training
of its own (`Method.trains` false) is evaluated once instead of the epochs.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import itertools
import math
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# cuBLAS reads this when CUDA initialises; it must be set before, for deterministic GEMMs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import mmbench  # noqa: E402
from mmbench.config import AUTO_ON_CUDA, ConfigError, RunConfig, to_yaml  # noqa: E402
from mmbench.cpus import default_threads  # noqa: E402
from mmbench.data import Batch, Dataset, PlannedBatch, Split, Splits, carve_validation, prefetched  # noqa: E402
from mmbench.registry import DATASETS, METHODS  # noqa: E402
from mmbench.results import (  # noqa: E402
    RunPaths,
    config_columns,
    run_paths,
    write_epochs,
    write_json,
    write_run,
    write_text,
)
from mmbench.train.cost import PassCounter  # noqa: E402
from mmbench.train.method import RNG_PURPOSES, Method, RunContext, derive_seed  # noqa: E402
from mmbench.train.metrics import (  # noqa: E402
    classification_metrics,
    decision_layer_diagnostics,
    imbalance_ratio,
    modality_scores,
    true_class_score,
)
from mmbench.train.models import Encoder, Outputs, build_av_model  # noqa: E402
from mmbench.train.shapley import shapley_two  # noqa: E402

SELECTIONS = ("final", "best_val")


class RunFailed(RuntimeError):
    """A run stopped with an error; the message is one line for the user."""


class NonFiniteLoss(RunFailed):
    pass


class Reporter:
    """Progress callbacks; the CLI supplies a rich or a plain-text one."""

    def run_started(self, cfg: RunConfig, epochs: int, steps: int, start_epoch: int) -> None: ...
    def step(self, loss: torch.Tensor) -> None:
        """After each training step; `loss` is a 0-dim device tensor, and reading it is a host-device
        sync: read it at most a few times a second."""
    def epoch_finished(self, row: dict[str, Any]) -> None: ...
    def run_finished(self, row: dict[str, Any]) -> None: ...


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunFailed(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


# num_threads=0 means the cores this process may use (affinity and cgroup quota, at most 8), not
# torch's count of the machine's cores nor "whatever an earlier run in this process set": the thread
# count changes how reductions are split, hence the last bits of every result.
DEFAULT_THREADS = default_threads()


def tune_allocator() -> None:
    """Keep freed large blocks in the heap (glibc): every batch allocates tens of MB of tensors,
    and fresh pages from the kernel cost more than the arithmetic on them (measured: converting a
    64 x 3 x 224 x 224 uint8 batch to float, 21 ms -> 9 ms). No effect on the numbers."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def set_deterministic_algorithms(mode: bool, compiled: bool = False) -> None:
    """`torch.use_deterministic_algorithms(mode, warn_only=True)` without its import of torch._inductor
    (3 s of every run's start-up), which only sets the flag for compiled code: the public call is used
    for a run that compiles (`compiled`) and once inductor is imported."""
    if compiled or "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=True)


def configure_determinism(cfg: RunConfig) -> int:
    torch.set_num_threads(cfg.num_threads if cfg.num_threads > 0 else DEFAULT_THREADS)
    set_deterministic_algorithms(cfg.deterministic, compiled=cfg.compile != "none")
    torch.backends.cudnn.benchmark = not cfg.deterministic
    return torch.get_num_threads()


def make_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The data order is drawn on the CPU; noise that methods and augmentation draw lives on
    the training device."""
    generators = {}
    for purpose in RNG_PURPOSES:
        where = "cpu" if purpose == "order" else device
        generators[purpose] = torch.Generator(device=where).manual_seed(derive_seed(seed, purpose))
    return generators


def build_optimizer(params: Any, cfg: RunConfig) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser (PyTorch's defaults besides lr and weight decay) and its per-epoch schedule:
    StepLR(lr_step), or MultiStepLR at `lr_milestones` when they are given, both by lr_gamma."""
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_milestones:
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.lr_milestones), cfg.lr_gamma)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)


# Adam couples weight decay into the gradient (L2), AdamW decouples it; the official codes use each.
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}


def step_schedule(scheduler: Any) -> None:
    """One step of the per-epoch schedule. With `lr_step_at=epoch_start` the first step comes
    before any optimiser step, as in AUG's loop (`train_CREMAD.py` ~210-212): StepLR(70) then
    decays for epochs 69 and 139, not 70 and 140. PyTorch warns about that order; it is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()


def load_splits(dataset: Dataset, cfg: RunConfig) -> Splits:
    splits = dataset.load()
    if splits.val is None:
        train, val = carve_validation(splits.train, cfg.val_fraction, cfg.split_seed)
        splits = Splits(train=train, val=val, test=splits.test)
    return splits


@dataclass
class Evaluation:
    metrics: dict[str, float]
    logits: np.ndarray
    logits_a: np.ndarray | None
    logits_v: np.ndarray | None
    y: np.ndarray


@torch.no_grad()
def infer(model: nn.Module, split: Split, dataset: Dataset, ctx: RunContext, forward: Callable[[Batch], Outputs],
          features: bool = False, augment: bool = False) -> dict[str, torch.Tensor]:
    """`forward` over a split in eval mode: logits, per-modality logits and feature norms (CPU); with
    `features`, the features too; with `augment`, the training augmentation, drawn from the "method"
    stream (so the shared "augment" stream stays as every method's)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    # Compiled encoders serve the training shapes; evaluation's other batch sizes and no-grad mode would
    # each compile new graphs (past dynamo's recompile limit) for a small share of the work.
    eager = torch.compiler.set_stance("force_eager") if ctx.cfg.compile != "none" else contextlib.nullcontext()
    with eager:
        for batch in split.batches(ctx.cfg.eval_batch_size):
            _infer_batch(batch, dataset, ctx, forward, parts, features, augment)
    model.train(was_training)
    return {key: torch.cat(chunks) for key, chunks in parts.items()}


def bind_infer(ctx: RunContext, dataset: Dataset) -> None:
    """Give the methods `ctx.infer` and `ctx.batches` (see RunContext) over `dataset`'s splits."""
    def bound(model: nn.Module, split: Split, forward: Callable[[Batch], Outputs] | None = None,
              features: bool = False, augment: bool = False) -> dict[str, torch.Tensor]:
        return infer(model, split, dataset, ctx, forward or (lambda b: model(b.audio, b.visual)), features, augment)

    def batches(split: Split, batch_size: int | None = None, augment: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        generator = generator or ctx.generator("method" if augment else "augment")
        for batch in split.batches(batch_size or ctx.cfg.eval_batch_size):
            yield dataset.transform(batch.to(ctx.device), train=augment, generator=generator)

    ctx.infer, ctx.batches = bound, batches


def bind_load_run(ctx: RunContext, out: Path, passes: PassCounter) -> None:
    """Set `ctx.load_run`: the model of a finished run the method requires, with its stored weights."""
    from mmbench.train.dependencies import required_configs

    required = required_configs(ctx.cfg)

    def load_run(key: str) -> nn.Module:
        if key not in required:
            raise RunFailed(f"method {ctx.cfg.method} loads run {key!r}, which it does not require; it requires "
                            f"{', '.join(map(repr, required)) or 'no run'} (Method.requires)")
        cfg = required[key]
        path = run_paths(out, cfg).weights
        state = torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
        if state is None or state.get("run_id") != cfg.run_id:
            raise RunFailed(f"{ctx.cfg.method} seed {ctx.cfg.seed} needs the weights of the {cfg.method} run "
                            f"{cfg.run_id} ({key}), not found at {path}: run it through `mmbench run` or "
                            "`mmbench sweep`, which train the runs a method requires first")
        model = build_required_model(cfg, ctx, state)
        passes.attach(model)
        return model

    ctx.load_run = load_run


def build_required_model(cfg: RunConfig, ctx: RunContext, state: dict[str, Any] | None = None) -> nn.Module:
    """The model of the required run `cfg`, as its method builds it (from its own seed), with the stored
    `state` (weights and method state) where given; on the run's device, in eval mode and frozen."""
    loaded_ctx = RunContext(cfg, ctx.num_classes, ctx.device, make_generators(cfg.seed, ctx.device))
    loaded_method = METHODS.get(cfg.method)(loaded_ctx)
    model = build_model(loaded_method, loaded_ctx)
    if state is not None:
        loaded_method.load_state_dict(state["method"], model)
        model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False)


def _infer_batch(batch: Batch, dataset: Dataset, ctx: RunContext, forward: Callable[[Batch], Outputs],
                 parts: dict[str, list[torch.Tensor]], features: bool, augment: bool) -> None:
    batch = dataset.transform(batch.to(ctx.device), train=augment,
                              generator=ctx.generator("method" if augment else "augment"))
    with ctx.autocast():
        out = forward(batch)
    values = {"logits": out.logits, "logits_a": out.logits_a, "logits_v": out.logits_v,
              "feat_norm_a": None if out.feat_a is None else out.feat_a.float().norm(dim=1),
              "feat_norm_v": None if out.feat_v is None else out.feat_v.float().norm(dim=1),
              **({"feat_a": out.feat_a, "feat_v": out.feat_v} if features else {})}
    for key, value in values.items():
        if value is not None:
            parts.setdefault(key, []).append(value.float().cpu())


def evaluate(model: nn.Module, method: Method, dataset: Dataset, split: Split,
             ctx: RunContext) -> Evaluation:
    parts = infer(model, split, dataset, ctx, lambda batch: method.predict(model, batch, ctx))
    logits, logits_a, logits_v = parts["logits"], parts.get("logits_a"), parts.get("logits_v")
    y = split.y.numpy()
    metrics = classification_metrics(logits.numpy(), y)
    metrics["loss"] = float(F.cross_entropy(logits, split.y))
    for m, mod_logits in (("a", logits_a), ("v", logits_v)):
        mod_metrics = classification_metrics(mod_logits.numpy(), y) if mod_logits is not None else {}
        for key in ("acc", "macro_f1", "map"):
            metrics[f"{key}_head_{m}"] = mod_metrics.get(key, math.nan)
    metrics["rho"] = math.nan
    if logits_a is not None and logits_v is not None:
        metrics["rho"] = imbalance_ratio(*modality_scores(logits_a, logits_v, split.y))
        weights = model.decision_weights() if callable(getattr(model, "decision_weights", None)) else None
        metrics.update(decision_layer_diagnostics(logits, logits_a, logits_v, split.y, parts.get("feat_norm_a"),
                                                  parts.get("feat_norm_v"), weights))
    return Evaluation(metrics, logits.numpy(), None if logits_a is None else logits_a.numpy(),
                      None if logits_v is None else logits_v.numpy(), y)


def train_epoch(model: nn.Module, method: Method, dataset: Dataset, train: Split,
                optimizer: torch.optim.Optimizer, ctx: RunContext, reporter: Reporter,
                prefetch: bool = False, plan: list[PlannedBatch] | None = None,
                masks: FeatureMasks | None = None) -> dict[str, float]:
    """One pass over the training split in the seeded order (with drop_last, the short last batch is not
    drawn), or the method's `plan` (with its keep-masks applied by `masks`); returns the epoch's train
    stats. With `prefetch` the batches
    are gathered on a background thread, into pinned memory on CUDA, while the device trains.

    Loss, correct predictions and rho stay on the device and are read once, at the end of the epoch
    (on a GPU every read is a host-device sync). A non-finite loss is noted on the device with its
    step and read every FINITE_CHECK_EVERY steps, so training stops within that many steps of it."""
    stats = _EpochStats(ctx.device)
    if plan is None:
        batches = itertools.islice(train.batches(ctx.cfg.batch_size, ctx.generator("order")),
                                   steps_per_epoch(len(train), ctx.cfg))
    else:
        batches = (dataclasses.replace(train.take(step.rows, ctx.generator("order")), keep_a=step.keep_a,
                                       keep_v=step.keep_v) for step in plan)
    if prefetch:
        batches = prefetched(batches, pin=ctx.device.type == "cuda")
    cuda_graphs = ctx.cfg.compile == "reduce-overhead" and ctx.device.type == "cuda"
    for step, batch in enumerate(batches):
        ctx.step = step
        if cuda_graphs:  # the previous step's graph outputs are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        moved = batch.to(ctx.device)
        batch = dataset.transform(moved, train=True, generator=ctx.generator("augment"))
        if masks is None:
            out, loss = method.train_step(model, batch, optimizer, ctx)
        else:
            batch = dataclasses.replace(batch, keep_a=moved.keep_a, keep_v=moved.keep_v)
            with masks.applied(batch):
                out, loss = method.train_step(model, batch, optimizer, ctx)
        stats.add(step, loss.detach(), out, out.targets(batch.y))
        if (step + 1) % FINITE_CHECK_EVERY == 0:
            stats.raise_if_not_finite(ctx)
        reporter.step(loss.detach())
    stats.raise_if_not_finite(ctx)
    return stats.read()


FINITE_CHECK_EVERY = 50


class FeatureMasks:
    """Zeroes, during a planned training step, the encoder features of the rows whose modality the plan
    removes: a forward hook on the model's `audio_encoder` and `visual_encoder`, idle outside the step."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.keep: dict[str, torch.Tensor | None] = {"a": None, "v": None}
        for m, name in (("a", "audio_encoder"), ("v", "visual_encoder")):
            encoder = getattr(model, name, None)
            if not isinstance(encoder, nn.Module):
                raise ConfigError(f"method {method}: its epoch plan removes modalities, but its model has no "
                                  f"`{name}` to remove them from; keep the encoders under those names")
            encoder.register_forward_hook(self._hook(m))

    @contextlib.contextmanager
    def applied(self, batch: Batch) -> Iterator[None]:
        self.keep = {"a": batch.keep_a, "v": batch.keep_v}
        try:
            yield
        finally:
            self.keep = {"a": None, "v": None}

    def _hook(self, modality: str) -> Callable[..., torch.Tensor | None]:
        @torch.compiler.disable  # runs eagerly after a compiled encoder, like the pass counter
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            keep = self.keep[modality]
            if keep is None:
                return None
            if output.shape[0] != keep.shape[0]:
                raise RuntimeError(f"a keep-mask of {keep.shape[0]} rows met an encoder pass over {output.shape[0]}: "
                                   "a planned step's forward passes must run on the whole batch")
            return output * keep.to(output.dtype).view(-1, *[1] * (output.dim() - 1))
        return hook


def check_plan(plan: list[PlannedBatch], rows: int, method: str) -> None:
    """A clear error for a malformed plan, before its epoch starts (one host read of each plan tensor)."""
    if not plan:
        raise ValueError(f"method {method}: epoch_plan returned no steps")
    for number, step in enumerate(plan, 1):
        where = f"method {method}: epoch_plan step {number}"
        if step.rows.dim() != 1 or len(step.rows) == 0 or step.rows.is_floating_point():
            raise ValueError(f"{where}: rows must be a non-empty 1-D integer tensor")
        if int(step.rows.min()) < 0 or int(step.rows.max()) >= rows:
            raise ValueError(f"{where}: rows must lie in [0, {rows}) (the training split)")
        for name in ("keep_a", "keep_v"):
            keep = getattr(step, name)
            if keep is not None and (keep.dtype != torch.bool or keep.shape != step.rows.shape):
                raise ValueError(f"{where}: {name} must be a bool tensor with one value per row")


def steps_per_epoch(rows: int, cfg: RunConfig) -> int:
    return rows // cfg.batch_size if cfg.drop_last else math.ceil(rows / cfg.batch_size)


class _EpochStats:
    """The running sums of an epoch, as device tensors."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # step of the first non-finite loss
        self.bad_loss = torch.zeros((), device=device)
        self.rhos: list[torch.Tensor] = []
        self.steps = self.seen = 0

    def add(self, step: int, loss: torch.Tensor, out: Outputs, y: torch.Tensor) -> None:
        newly_bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss.float(), self.bad_loss)
        self.loss_sum += loss.double()
        self.correct += (out.logits.argmax(1) == y).sum()
        self.steps, self.seen = self.steps + 1, self.seen + len(y)
        if out.logits_a is not None and out.logits_v is not None:
            # rho = s_a / s_v in float64 (x / 0 = inf, 0 / 0 = nan, as imbalance_ratio says)
            scores = [true_class_score(z.detach(), y).double() for z in (out.logits_a, out.logits_v)]
            self.rhos.append(scores[0] / scores[1])

    def raise_if_not_finite(self, ctx: RunContext) -> None:
        first_bad = int(self.first_bad)  # the one read: a device flag
        if first_bad >= 0:
            raise NonFiniteLoss(
                f"non-finite loss ({float(self.bad_loss)}) at epoch {ctx.epoch + 1} step {first_bad + 1}: "
                f"lower the learning rate (lr={ctx.cfg.lr}) or check the inputs"
            )

    def read(self) -> dict[str, float]:
        rho = float(torch.stack(self.rhos).mean()) if self.rhos else math.nan
        return {"train_loss": float(self.loss_sum) / self.steps if self.steps else math.nan,
                "train_acc": int(self.correct) / self.seen if self.seen else math.nan, "train_rho": rho}


def build_model(method: Method, ctx: RunContext, compile_encoders: bool = False) -> nn.Module:
    """The shared backbone from the "init" stream, then the method's additions from its own
    seed, so that a method's extra parameters shift no stream that other methods share.
    With `compile_encoders` and the `compile` key set, every encoder is compiled in place
    (`nn.Module.compile`: parameter names and the method's hooks stay as they are)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.cfg.seed, "init"))
        backbone = build_av_model(ctx.cfg, ctx.num_classes, ctx.cfg.uses("channels_last", ctx.device.type))
        torch.manual_seed(derive_seed(ctx.cfg.seed, "method-init"))
        model = method.build(backbone, ctx).to(ctx.device)
    if compile_encoders and ctx.cfg.compile != "none":
        for module in model.modules():
            if isinstance(module, Encoder):
                module.compile(mode=ctx.cfg.compile, dynamic=False)  # a graph per shape: the batch sizes are few
    return model


class Checkpoint:
    """`last.pt` (to resume) after an epoch once `every_s` seconds passed since the last one, and after
    the final epoch; `best.pt` (the state of the best validation epoch) just before it. In between, the
    best state is kept as a copy on the training device (no file per improvement), and the files are
    written on a background thread from a host copy, so training goes on meanwhile. A run killed at any
    point resumes from its last `last.pt` and ends identical: the epochs after it are recomputed from
    the same streams, and `best.pt` is never older than the `last.pt` written after it."""

    def __init__(self, paths: RunPaths, every_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = paths
        self.dir = paths.checkpoint_dir
        self.run_id = paths.run_id
        self.every_s, self.clock = every_s, clock
        self._last_write = clock()
        self._best: dict[str, Any] | None = None
        self._best_unwritten = False
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def save(self, path: Path, state: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"run_id": self.run_id, **state}, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        return state if state.get("run_id") == self.run_id else None

    def keep_best(self, model: nn.Module, method: Method) -> None:
        """Copy the model's state into the device-side best state (in place once shapes are known)."""
        weights = {k: v.detach() for k, v in model.state_dict().items()}
        kept = self._best["model"] if self._best is not None else {}
        if kept.keys() == weights.keys() and all(kept[k].shape == v.shape for k, v in weights.items()):
            torch._foreach_copy_(list(kept.values()), list(weights.values()))
        else:  # the first time, or a method grew the model
            kept = {k: v.clone() for k, v in weights.items()}
        self._best = {"model": kept, "method": _host_copy(method.state_dict())}
        self._best_unwritten = True

    def best_state(self) -> dict[str, Any] | None:
        """The best epoch's state: the device copy, or `best.pt` where it came before a resume."""
        return self._best if self._best is not None else self.load(self.best)

    def due(self) -> bool:
        return self.clock() - self._last_write >= self.every_s

    def write(self, last_state: dict[str, Any]) -> None:
        """Write `best.pt` (if it changed) then `last.pt` on a background thread, from host copies."""
        self.wait()
        best = _host_copy(self._best) if self._best_unwritten else None
        last = _host_copy(last_state)
        self._best_unwritten = False
        self._writer = threading.Thread(target=self._write, args=(best, last), name="mmbench-checkpoint")
        self._writer.start()
        self._last_write = self.clock()

    def _write(self, best: dict[str, Any] | None, last: dict[str, Any]) -> None:
        try:
            if best is not None:
                self.save(self.best, best)
            self.save(self.last, last)
        except BaseException as exc:  # noqa: BLE001  (raised in the training thread by wait())
            self._write_error = exc

    def wait(self) -> None:
        """Until the background write has finished; raises what it raised."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._write_error = self._write_error, None
        if error is not None:
            raise error

    def remove(self) -> None:
        self.wait()
        for path in (self.last, self.best):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()
            self.dir.parent.rmdir()  # the .checkpoints folder, once no run has one


def _host_copy(state: Any) -> Any:
    """A copy of a (nested) state on the CPU that later training steps cannot change."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _host_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_host_copy(v) for v in state)
    return copy.deepcopy(state)


def run(cfg: RunConfig, out: str | Path, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train, evaluate and store one run; resumes from its checkpoint if one exists.
    Returns the run row. A failure writes `failed/.../<run_id>.json` and raises RunFailed."""
    from mmbench.train.trackers import Tee, open_trackers

    reporter = reporter or Reporter()
    paths = run_paths(out, cfg)
    tune_allocator()
    trackers = open_trackers(cfg, paths.root)  # --log: TensorBoard, W&B, MLflow
    finished = False
    try:
        write_text(paths.config, to_yaml(cfg))
        row = _run(cfg, paths, Tee([reporter, *trackers]) if trackers else reporter)
        finished = True
        return row
    except RunFailed as exc:
        _record_failure(paths, cfg, exc)
        raise
    except Exception as exc:  # any crash is a failed run, recorded, with its cause in one line
        _record_failure(paths, cfg, exc)
        raise RunFailed(f"run {cfg.run_id} ({cfg.method}, seed {cfg.seed}) failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    finally:
        for tracker in trackers:
            tracker.close(finished)


def _record_failure(paths: RunPaths, cfg: RunConfig, exc: BaseException) -> None:
    """Write `failed/.../<run_id>.json`; this must not fail itself (a full disk is a common cause), so where
    it cannot be written the reason goes to stderr and the original error stays the one raised."""
    try:
        write_json(paths.failed, {"run_id": cfg.run_id, "error": f"{type(exc).__name__}: {exc}",
                                  "config": cfg.to_dict(), "at": _now()})
    except OSError as write_error:
        print(f"mmbench: could not write {paths.failed} ({write_error}); the run failed with: {exc}",
              file=sys.stderr)


@dataclass
class Progress:
    """What the loop accumulates; saved in every checkpoint so a resumed run continues it."""

    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -math.inf
    train_time: float = 0.0
    train_samples: int = 0
    #: Samples through each encoder, forwards and backwards, while training (mmbench/train/cost.py).
    encoder_samples: dict[str, int] = field(default_factory=dict)


def _run(cfg: RunConfig, paths: RunPaths, reporter: Reporter) -> dict[str, Any]:
    started, t0 = _now(), time.perf_counter()
    num_threads = configure_determinism(cfg)
    device = select_device(cfg.device)
    generators = make_generators(cfg.seed, device)
    torch.manual_seed(derive_seed(cfg.seed, "global"))  # for anything that draws unseeded

    dataset = DATASETS.get(cfg.dataset)(cfg)
    splits = load_splits(dataset, cfg)
    resident = bool(dataset.place(device))
    steps = steps_per_epoch(len(splits.train), cfg)
    if steps == 0:
        raise RunFailed(f"drop_last=true drops every batch: batch_size={cfg.batch_size} is more than the "
                        f"{len(splits.train)} training rows; lower batch_size or set drop_last=false")
    ctx = RunContext(cfg, len(dataset.classes), device, generators, steps_per_epoch=steps, train=splits.train,
                     val=splits.val)
    bind_infer(ctx, dataset)
    passes = PassCounter()
    bind_load_run(ctx, paths.root, passes)
    method: Method = METHODS.get(cfg.method)(ctx)
    model = build_model(method, ctx, compile_encoders=True)
    passes.attach(model, compiled=cfg.compile != "none")
    checkpoint = Checkpoint(paths, cfg.checkpoint_every_s)
    if method.trains:
        progress = _train(model, method, dataset, splits, ctx, checkpoint, passes, reporter, resident)
    else:
        progress = _evaluate_untrained(model, method, dataset, splits, ctx, checkpoint, reporter)

    evaluations = {"final": _evaluate_selected(model, method, dataset, splits, ctx)}
    checkpoint.wait()
    best_state = checkpoint.best_state()
    if best_state is not None:
        best_model = build_model(method, ctx)
        method.load_state_dict(best_state["method"], best_model)
        best_model.load_state_dict(best_state["model"])
        evaluations["best_val"] = _evaluate_selected(best_model, method, dataset, splits, ctx)
    if cfg.keep_weights:  # before the run row: a run with its row is finished, so its weights must be there
        selected = best_state or {"model": model.state_dict(), "method": method.state_dict()}
        checkpoint.save(paths.weights, {"selection": "best_val" if best_state is not None else "final",
                                        **_host_copy(selected)})

    row = _run_row(cfg, dataset, splits, evaluations, progress)
    row.update(passes.columns(progress.train_samples))
    row["required_gflops_per_sample"] = _required_cost(paths.root, cfg)
    row.update({key: cfg.uses(key, device.type) for key in AUTO_ON_CUDA})  # what ran, where the config says auto
    row.update(_provenance(device, num_threads, started, time.perf_counter() - t0,
                           progress.train_samples / progress.train_time if progress.train_time else math.nan))
    write_run(paths, row, progress.epoch_rows, _prediction_columns(cfg.run_id, splits.test, evaluations))
    checkpoint.remove()
    reporter.run_finished(row)
    return row


def _train(model: nn.Module, method: Method, dataset: Dataset, splits: Splits, ctx: RunContext,
           checkpoint: Checkpoint, passes: PassCounter, reporter: Reporter, resident: bool) -> Progress:
    """The epochs, from the last checkpoint on: train, evaluate, keep the best state, checkpoint."""
    cfg, generators, steps = ctx.cfg, ctx.generators, ctx.steps_per_epoch
    optimizer, scheduler = build_optimizer(method.parameters(model, ctx), cfg)
    progress = Progress()
    state = checkpoint.load(checkpoint.last)
    if state is not None:
        optimizer, scheduler, progress = _restore(state, model, method, ctx)
        passes.samples.update(progress.encoder_samples)
    extra_optimizers = method.extra_optimizers(model, ctx)
    for name, extra in extra_optimizers.items() if state is not None else ():
        extra.load_state_dict(state["extra_optimizers"][name])
    ctx.optimizer = optimizer
    reporter.run_started(cfg, cfg.epochs, steps, len(progress.epoch_rows))

    model.train()
    masks: FeatureMasks | None = None
    for epoch in range(len(progress.epoch_rows), cfg.epochs):
        ctx.epoch = epoch
        epoch_t0 = time.perf_counter()
        if cfg.lr_step_at == "epoch_start":
            step_schedule(scheduler)
        lr = optimizer.param_groups[0]["lr"]
        passes.on = True  # what the method runs between epochs (e.g. prototypes) is training cost too
        ctx.steps_per_epoch = steps
        method.on_epoch_start(model, ctx)
        plan = method.epoch_plan(model, ctx)
        if plan is not None:
            check_plan(plan, len(splits.train), cfg.method)
            ctx.steps_per_epoch = len(plan)
            if masks is None and any(step.keep_a is not None or step.keep_v is not None for step in plan):
                masks = FeatureMasks(model, cfg.method)
        train_stats = train_epoch(model, method, dataset, splits.train, optimizer, ctx, reporter,
                                  prefetch=ctx.device.type == "cuda" and not resident, plan=plan, masks=masks)
        progress.train_time += time.perf_counter() - epoch_t0
        progress.train_samples += (min(len(splits.train), steps * cfg.batch_size) if plan is None
                                   else sum(len(step.rows) for step in plan))
        if cfg.lr_step_at == "epoch_end":
            step_schedule(scheduler)
        method.on_epoch_end(model, ctx)
        passes.on = False
        progress.encoder_samples = dict(passes.samples)
        row = {"run_id": cfg.run_id, "epoch": epoch, "lr": lr, **train_stats}
        diagnostics = {**ctx.pop_epoch_logs(), **method.diagnostics()}
        row.update({f"diag_{k}": float(v) for k, v in diagnostics.items()})
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1
        for split_name, split in (("val", splits.val), ("test", splits.test)) if evaluated else ():
            metrics = evaluate(model, method, dataset, split, ctx).metrics
            row.update({f"{split_name}_{k}": v for k, v in metrics.items()})
        row["epoch_wall_s"] = time.perf_counter() - epoch_t0
        progress.epoch_rows.append(row)
        if evaluated and row["val_acc"] > progress.best_val_acc:
            progress.best_epoch, progress.best_val_acc = epoch, row["val_acc"]
            checkpoint.keep_best(model, method)
        if epoch == cfg.epochs - 1 or checkpoint.due():
            checkpoint.write({
                "model": model.state_dict(), "method": method.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "extra_optimizers": {name: extra.state_dict() for name, extra in extra_optimizers.items()},
                "generators": {k: g.get_state() for k, g in generators.items()}, "torch_rng": _global_rng(),
                "progress": dataclasses.asdict(progress),
            })
        write_epochs(checkpoint.paths, progress.epoch_rows)
        reporter.epoch_finished(row)
    return progress


def _evaluate_untrained(model: nn.Module, method: Method, dataset: Dataset, splits: Splits, ctx: RunContext,
                        checkpoint: Checkpoint, reporter: Reporter) -> Progress:
    """A method without training (`Method.trains` false): one epoch row with the validation and test
    metrics of the model as built; that model is the selected one."""
    reporter.run_started(ctx.cfg, 1, 0, 0)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"run_id": ctx.cfg.run_id, "epoch": 0, "lr": math.nan, "train_loss": math.nan,
                           "train_acc": math.nan, "train_rho": math.nan}
    for split_name, split in (("val", splits.val), ("test", splits.test)):
        row.update({f"{split_name}_{k}": v for k, v in evaluate(model, method, dataset, split, ctx).metrics.items()})
    row["epoch_wall_s"] = time.perf_counter() - t0
    progress = Progress(epoch_rows=[row], best_epoch=0, best_val_acc=row["val_acc"])
    checkpoint.keep_best(model, method)
    write_epochs(checkpoint.paths, progress.epoch_rows)
    reporter.epoch_finished(row)
    return progress


def _required_cost(out: Path, cfg: RunConfig) -> float:
    """The train GFLOPs per sample of the runs this run required (and of theirs), for a report that counts
    what a method costs from scratch: same protocol, so the same samples per epoch; 0 for none."""
    from mmbench.results import read_row
    from mmbench.train.dependencies import required_configs

    total = 0.0
    for required in required_configs(cfg).values():
        row = read_row(run_paths(out, required))
        total += float(np.nan_to_num(row.get("train_gflops_per_sample", math.nan)))
        total += float(np.nan_to_num(row.get("required_gflops_per_sample", 0.0)))
    return total


def _global_rng() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore(state: dict[str, Any], model: nn.Module, method: Method,
             ctx: RunContext) -> tuple[torch.optim.Optimizer, Any, Progress]:
    """Back to the end of the last checkpointed epoch: weights, optimiser, schedule, streams."""
    method.load_state_dict(state["method"], model)  # may grow the model first
    model.load_state_dict(state["model"])
    optimizer, scheduler = build_optimizer(method.parameters(model, ctx), ctx.cfg)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for purpose, rng_state in state["generators"].items():
        ctx.generators[purpose].set_state(rng_state)
    torch.set_rng_state(state["torch_rng"]["cpu"])
    if state["torch_rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_rng"]["cuda"])
    return optimizer, scheduler, Progress(**state["progress"])


def _evaluate_selected(model: nn.Module, method: Method, dataset: Dataset, splits: Splits,
                       ctx: RunContext) -> Evaluation:
    """Post-hoc calibration on validation (a no-op for most methods), then the test set, then the
    test set with modalities removed (for the Shapley contributions)."""
    method.calibrate(model, splits.val, ctx)
    evaluation = evaluate(model, method, dataset, splits.test, ctx)
    # What the post-hoc step decided for this checkpoint (e.g. dlc's temperatures, or that it fell back).
    evaluation.metrics.update({f"diag_{k}": float(v) for k, v in method.diagnostics().items()})
    evaluation.metrics.update(modality_ablation(model, method, dataset, splits.test, ctx,
                                                evaluation.metrics["acc"]))
    return evaluation


def modality_ablation(model: nn.Module, method: Method, dataset: Dataset, split: Split, ctx: RunContext,
                      acc_both: float) -> dict[str, float]:
    """Accuracy of the fused prediction with audio, visual or both inputs replaced by zeros after
    normalisation, i.e. by the mean input (docs/statistics.md, mean-input ablation), and the
    two-player Shapley contributions of the modalities (§5.3)."""
    y = split.y.numpy()
    accs = {}
    for name, drop_audio, drop_visual in (("a", True, False), ("v", False, True), ("av", True, True)):
        def masked(batch: Batch, drop_audio: bool = drop_audio, drop_visual: bool = drop_visual) -> Outputs:
            audio = torch.zeros_like(batch.audio) if drop_audio else batch.audio
            visual = torch.zeros_like(batch.visual) if drop_visual else batch.visual
            return method.predict(model, Batch(audio, visual, batch.y, batch.index), ctx)
        logits = infer(model, split, dataset, ctx, masked)["logits"].numpy()
        accs[name] = float((logits.argmax(1) == y).mean())
    shapley = shapley_two(v_av=acc_both, v_a=accs["v"], v_v=accs["a"], v_none=accs["av"])
    return {"acc_mask_a": accs["a"], "acc_mask_v": accs["v"], "acc_mask_av": accs["av"],
            "shapley_a": shapley.phi_a, "shapley_v": shapley.phi_v, "imbalance_degree": shapley.imbalance}


def _run_row(cfg: RunConfig, dataset: Dataset, splits: Splits, evaluations: dict[str, Evaluation],
             progress: Progress) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": cfg.run_id, "status": "ok", **config_columns(cfg)}
    row.update({"pair_key": cfg.seed, "crn": True, "classes": ",".join(dataset.classes),
                "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test)})
    for selection in SELECTIONS:
        evaluation = evaluations.get(selection, evaluations["final"])
        row.update({f"{selection}_{k}": v for k, v in evaluation.metrics.items()})
    row["code_version"] = cfg.code_version()
    # What the report must know about the method without importing it (and torch).
    method_cls = METHODS.get(cfg.method)
    row["method_reference"] = bool(method_cls.reference)
    row["method_calibrates"] = method_cls.calibrate is not Method.calibrate
    row["modality_logits"] = method_cls.logits_kind(cfg)
    row.update(dataset.provenance())
    row["best_val_epoch"] = progress.best_epoch
    row["best_val_val_acc"] = progress.best_val_acc
    test_accs = [r.get("test_acc", math.nan) for r in progress.epoch_rows]
    # "Paper protocol": the maximum test accuracy over epochs, as the official codes report.
    # It selects on the test set and is optimistic; stored only to show the gap.
    row["paper_max_acc"] = float(np.nanmax(test_accs))
    row["paper_max_epoch"] = int(np.nanargmax(test_accs))  # the last epoch is always evaluated
    return row


def _prediction_columns(run_id: str, test: Split, evaluations: dict[str, Evaluation]) -> dict[str, list]:
    columns: dict[str, list] = {k: [] for k in ("run_id", "selection", "sample_id", "group_id", "y",
                                                "pred", "pred_a", "pred_v", "p_true", "probs")}
    for selection, ev in evaluations.items():
        probs = torch.softmax(torch.from_numpy(ev.logits), dim=1).numpy()
        n = len(ev.y)
        columns["run_id"] += [run_id] * n
        columns["selection"] += [selection] * n
        columns["sample_id"] += list(test.sample_id)
        columns["group_id"] += list(test.group_id)
        columns["y"] += ev.y.tolist()
        columns["pred"] += ev.logits.argmax(1).tolist()
        for m, mod_logits in (("a", ev.logits_a), ("v", ev.logits_v)):
            columns[f"pred_{m}"] += mod_logits.argmax(1).tolist() if mod_logits is not None else [-1] * n
        columns["p_true"] += probs[np.arange(n), ev.y].tolist()
        columns["probs"] += probs.astype(np.float32).tolist()
    return columns


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_sha() -> str | None:
    source = Path(mmbench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _torchvision_version() -> str:
    """torchvision's `__version__` (with its build tag, e.g. +cu130) without importing it, which takes 2 s."""
    import importlib.metadata
    import importlib.util
    import re

    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = re.search(r"^__version__ = ['\"]([^'\"]+)", (Path(folder) / "version.py").read_text(), re.M) \
            if (Path(folder) / "version.py").is_file() else None
        if found:
            return found.group(1)
    return importlib.metadata.version("torchvision")


def _provenance(device: torch.device, num_threads: int, started: str, wall_s: float,
                samples_per_s: float) -> dict[str, Any]:
    return {
        "schema_version": mmbench.RESULT_SCHEMA_VERSION, "mmbench_version": mmbench.__version__,
        "git_sha": _git_sha(), "torch_version": torch.__version__,
        "torchvision_version": _torchvision_version(), "python_version": sys.version.split()[0],
        "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "num_threads": num_threads, "started_at": started, "finished_at": _now(), "wall_s": wall_s,
        "train_samples_per_s": samples_per_s,
    }

"""The dataset contract: tensors in memory (or memory-mapped), batches, splits.

A dataset adapter turns its source into a `Splits` of `TensorSplit`s: audio as (N, 1, F, T)
spectrogram-like tensors, visual as (N, T, 3, H, W) frame stacks, integer labels, and a
sample id plus a group id (speaker, source video) per sample. Augmentation and
normalisation run on whole batches on the training device (`Dataset.transform`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from mmbench.config import ConfigError, DataError, RunConfig  # noqa: F401  (DataError: re-exported)
from mmbench.registry import Plugin


@dataclass
class Batch:
    audio: torch.Tensor
    visual: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # row numbers in the split, for per-sample bookkeeping
    #: Per-row modality keep-masks of a planned epoch (`Method.epoch_plan`): the engine zeroes the features
    #: of a row's absent modality after its encoder during the training step; None: every row keeps it.
    keep_a: torch.Tensor | None = None
    keep_v: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _map(self, fn: Any) -> Batch:
        return Batch(*(None if t is None else fn(t) for t in (self.audio, self.visual, self.y, self.index,
                                                               self.keep_a, self.keep_v)))

    def to(self, device: torch.device) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """In page-locked memory, so that `to(cuda)` is an asynchronous copy."""
        return self._map(lambda t: t.pin_memory())


@dataclass
class PlannedBatch:
    """One training step of a planned epoch: rows of the training split in this order (a row may come
    more than once), and optionally which rows keep each modality (bool, one per row)."""

    rows: torch.Tensor
    keep_a: torch.Tensor | None = None
    keep_v: torch.Tensor | None = None


def plan_batches(rows: torch.Tensor, batch_size: int, keep_a: torch.Tensor | None = None,
                 keep_v: torch.Tensor | None = None) -> list[PlannedBatch]:
    """`rows` (with their keep-masks) cut in order into batches of `batch_size`, the last one short."""
    def part(mask: torch.Tensor | None, start: int) -> torch.Tensor | None:
        return None if mask is None else mask[start:start + batch_size]

    return [PlannedBatch(rows[start:start + batch_size], part(keep_a, start), part(keep_v, start))
            for start in range(0, len(rows), batch_size)]


@dataclass
class TensorSplit:
    audio: torch.Tensor
    visual: torch.Tensor
    y: torch.Tensor
    sample_id: list[str]
    group_id: list[str]

    def __post_init__(self) -> None:
        n = len(self.y)
        sizes = {len(self.audio), len(self.visual), len(self.sample_id), len(self.group_id)}
        if sizes != {n}:
            raise ValueError(f"split columns disagree in length: {sizes | {n}}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, rows: torch.Tensor) -> TensorSplit:
        rows_list = rows.tolist()
        return TensorSplit(
            self.audio[rows], self.visual[rows], self.y[rows],
            [self.sample_id[i] for i in rows_list], [self.group_id[i] for i in rows_list],
        )

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled with `generator` when given, else in order; the last batch may be short."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.take(order[start:start + batch_size])

    def take(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        """The batch of `rows` in this order (repeats allowed)."""
        return Batch(self.audio[rows], self.visual[rows], self.y[rows], rows)


def prefetched(batches: Iterator[Batch], pin: bool, depth: int = 2) -> Iterator[Batch]:
    """`batches`, read up to `depth` ahead on a background thread (into pinned memory when `pin`), so
    that the host's gather out of the memory map overlaps the device's work on the previous steps.
    The same batches in the same order, with the same draws: the thread is the only reader of
    `batches` and of the generator it draws from. An error in the thread is raised here; closing
    this iterator early (or an error in the consumer) stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[Batch | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer((batch.pin_memory() if pin else batch, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 (re-raised in the consumer)
            offer((None, exc))
            return
        offer((None, None))

    thread = threading.Thread(target=produce, name="mmbench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = slots.get()
            if error is not None:
                raise error
            if batch is None:
                return
            yield batch
    finally:
        stop.set()
        thread.join()


class Split(Protocol):
    """What the engine needs of a split: labels, ids, row subsets and batches. `TensorSplit`
    holds tensors in memory; `mmbench.data.cache.CachedSplit` reads a memory-mapped feature cache."""

    y: torch.Tensor
    sample_id: list[str]
    group_id: list[str]

    def __len__(self) -> int: ...
    def subset(self, rows: torch.Tensor) -> Split: ...
    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]: ...
    def take(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        """The batch of `rows` in this order; a training draw (e.g. of frames) from `generator` when given."""
        ...


@dataclass
class Splits:
    train: Split
    test: Split
    val: Split | None = None


def carve_validation(train: Split, fraction: float, split_seed: int, by_group: bool = False) -> tuple[Split, Split]:
    """Stratified hold-out of `fraction` of each class, fixed by `split_seed` (not the run seed).
    With `by_group`, whole groups (speakers) are held out instead, so validation stays
    speaker-disjoint from training like the test split."""
    if by_group:
        return _carve_groups(train, fraction, split_seed)
    if not 0 < fraction < 1:
        raise ConfigError(f"val_fraction={fraction}: must be between 0 and 1 (exclusive)")
    generator = torch.Generator().manual_seed(split_seed)
    val_rows: list[torch.Tensor] = []
    for label in torch.unique(train.y).tolist():
        rows = torch.nonzero(train.y == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        val_rows.append(rows[: max(1, round(fraction * len(rows)))])
    val = torch.sort(torch.cat(val_rows)).values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val] = False
    return train.subset(torch.nonzero(keep).flatten()), train.subset(val)


def _carve_groups(train: Split, fraction: float, split_seed: int) -> tuple[Split, Split]:
    held = set(hold_out_groups(train.group_id, fraction, split_seed))
    in_val = torch.tensor([g in held for g in train.group_id], dtype=torch.bool)
    return train.subset(torch.nonzero(~in_val).flatten()), train.subset(torch.nonzero(in_val).flatten())


def hold_out_groups(groups: list[str], fraction: float, split_seed: int) -> list[str]:
    """Groups in a seeded order, taken until they hold `fraction` of the rows (at least one
    group, never all of them)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction={fraction}: must be between 0 and 1 (exclusive)")
    names = sorted(set(groups))
    if len(names) < 2:
        raise DataError(f"a group-disjoint split needs at least 2 groups (speakers), found {len(names)}")
    sizes = {name: 0 for name in names}
    for g in groups:
        sizes[g] += 1
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(split_seed)).tolist()
    held, count, target = [], 0, fraction * len(groups)
    for i in order[:-1]:
        if held and count + sizes[names[i]] / 2 > target:
            break
        held.append(names[i])
        count += sizes[names[i]]
    return held


class Dataset(Plugin):
    """Base class of dataset adapters; register a subclass with `@register_dataset`."""

    #: Knobs of the dataset itself (size, difficulty, ...), settable with --set.
    params: ClassVar[dict[str, Any]] = {}
    #: Params that say where the data is on this machine: recorded, not part of the run_id.
    location_params: ClassVar[tuple[str, ...]] = ()
    #: Run-config defaults for this dataset (epochs, lr, encoder, ...): the benchmark protocol.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.p = cfg.data

    @property
    def classes(self) -> list[str]:
        raise NotImplementedError

    def load(self) -> Splits:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """Columns stored with every result row that say which data was read (e.g. the cache
        fingerprint); not part of the run's identity."""
        return {}

    def place(self, device: torch.device) -> bool:
        """Move what the dataset holds to the training device where that pays (default: nothing);
        true when batches are then gathered there (else the engine prefetches them on a thread)."""
        return False

    def transform(self, batch: Batch, train: bool, generator: torch.Generator) -> Batch:
        """Batch-level augmentation (train) or deterministic preprocessing (eval), on device."""
        return batch

"""Result files: layout, schemas, atomic writes, "already done" checks, reading back.

A results folder holds one hive-partitioned root per table, so that `pandas.read_parquet(
"results/runs")` or DuckDB's `read_parquet('results/runs/**/*.parquet', hive_partitioning=true)`
reads exactly one schema (dataset and method come from the folder names):
  runs/dataset=<d>/method=<m>/<run_id>.parquet    one row: resolved config, final / best-val / paper
                                                  metrics, provenance (RUN_SCHEMA)
  epochs/dataset=<d>/method=<m>/<run_id>.parquet  one row per epoch: curves (EPOCH_SCHEMA)
  preds/dataset=<d>/method=<m>/<run_id>.parquet   one row per test sample and selection
  configs/dataset=<d>/method=<m>/<run_id>.yaml    the resolved config, written when the run starts
  failed/dataset=<d>/method=<m>/<run_id>.json     only for a run that failed (removed on success)
What differs between methods and datasets is packed into JSON columns of one fixed schema:
`hparams` (the method's hyper-parameters), `data` (dataset settings and provenance) and
`diagnostics` (method and imbalance diagnostics); `read_runs` / `read_epochs` unpack them into
`hp_<name>`, `data_<name>` and the diagnostics' own columns. The run row is written last, so its
presence means the run finished. Every file is written to a dot-prefixed temporary file in the same
folder and renamed (readers skip dot files). The first layout kept all of a run's files in
`dataset=<d>/method=<m>/` at the top, where pandas and DuckDB silently mixed the three schemas;
such folders are moved into this layout on first use (`migrate_legacy_layout`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmbench.config import ConfigError, RunConfig

_METRICS = ["acc", "acc_head_a", "acc_head_v", "acc_mask_a", "acc_mask_v", "acc_mask_av", "imbalance_degree",
            "loss", "macro_f1", "macro_f1_head_a", "macro_f1_head_v", "map", "map_head_a", "map_head_v", "rho",
            "shapley_a", "shapley_v"]
_CURVES = ["acc", "acc_head_a", "acc_head_v", "loss", "macro_f1", "macro_f1_head_a", "macro_f1_head_v", "map",
           "map_head_a", "map_head_v", "rho"]


def _fields(kind: pa.DataType, names: list[str]) -> list[pa.Field]:
    return [pa.field(name, kind) for name in names]


RUN_SCHEMA = pa.schema([
    *_fields(pa.string(), ["run_id", "status", "profile", "optimizer", "lr_step_at", "encoder", "fusion",
                           "linear_init", "device", "classes", "code_version", "mmbench_version", "git_sha",
                           "torch_version", "torchvision_version", "python_version", "platform", "device_name",
                           "started_at", "finished_at", "config_json", "log", "compile", "lr_milestones",
                           "modality_logits"]),
    *_fields(pa.int64(), ["seed", "epochs", "eval_every", "batch_size", "eval_batch_size", "lr_step", "encoder_width",
                          "split_seed", "num_threads", "pair_key", "n_train", "n_val", "n_test", "schema_version",
                          "best_val_epoch", "paper_max_epoch", "final_n_correct", "best_val_n_correct"]),
    *_fields(pa.float64(), ["lr", "momentum", "weight_decay", "lr_gamma", "val_fraction", "checkpoint_every_s",
                            "best_val_val_acc",
                            "paper_max_acc", "wall_s", "train_samples_per_s", "cost_fwd_a", "cost_fwd_v",
                            "cost_bwd_a", "cost_bwd_v", "train_gflops_per_sample", "required_gflops_per_sample",
                            *[f"{sel}_{m}" for sel in ("final", "best_val") for m in _METRICS]]),
    *_fields(pa.bool_(), ["bf16", "channels_last", "deterministic", "drop_last", "keep_weights", "crn",
                          "method_reference",
                          "method_calibrates"]),
    *_fields(pa.string(), ["hparams", "data", "diagnostics"]),
])
EPOCH_SCHEMA = pa.schema([
    pa.field("run_id", pa.string()), pa.field("epoch", pa.int64()),
    *_fields(pa.float64(), ["lr", "epoch_wall_s", "train_loss", "train_acc", "train_rho",
                            *[f"{split}_{m}" for split in ("val", "test") for m in _CURVES]]),
    *_fields(pa.int64(), ["val_n_correct", "test_n_correct"]),
    pa.field("diagnostics", pa.string()),
])
_PACKED = {"hparams": "hp_", "data": "data_"}  # the rest of what a schema lacks goes to `diagnostics`
_PARTITIONS = ("dataset", "method")


@dataclass(frozen=True)
class RunPaths:
    root: Path
    dataset: str
    method: str
    run_id: str
    #: The run must also have stored its weights to count as finished (a run another run loads).
    needs_weights: bool = False

    def _file(self, table: str, suffix: str = ".parquet") -> Path:
        return self.root / table / f"dataset={self.dataset}" / f"method={self.method}" / f"{self.run_id}{suffix}"

    @property
    def row(self) -> Path:
        return self._file("runs")

    @property
    def epochs(self) -> Path:
        return self._file("epochs")

    @property
    def preds(self) -> Path:
        return self._file("preds")

    @property
    def config(self) -> Path:
        """The resolved config as YAML, accepted by `mmbench run --config` as it is."""
        return self._file("configs", ".yaml")

    @property
    def failed(self) -> Path:
        return self._file("failed", ".json")

    @property
    def weights(self) -> Path:
        """The selected model's weights, kept for a run with keep_weights (one that another run loads)."""
        return self._file("weights", ".pt")

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / ".checkpoints" / self.run_id


def run_paths(out: str | Path, cfg: RunConfig) -> RunPaths:
    migrate_legacy_layout(Path(out))
    return RunPaths(Path(out), cfg.dataset, cfg.method, cfg.run_id, needs_weights=cfg.keep_weights)


def is_done(paths: RunPaths) -> bool:
    """A finished run is one whose three files read back and whose row is this run's, not merely a
    run row on disk: a truncated or foreign file is trained again (and replaced). A run that another run
    loads is finished once its weights are stored too: one finished without them is trained again."""
    if not paths.row.is_file() or (paths.needs_weights and not paths.weights.is_file()):
        return False
    try:
        pq.read_metadata(paths.epochs)
        pq.read_metadata(paths.preds)
    except (OSError, pa.ArrowException):
        return False
    return not isinstance(_read_row(paths.row), str)


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _pack(record: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """One record of `schema`: its own columns as they are, everything else in the JSON columns."""
    packed: dict[str, dict[str, Any]] = {"hparams": {}, "data": {}, "diagnostics": {}}
    fixed: dict[str, Any] = {}
    for key, value in record.items():
        if key in _PARTITIONS:
            continue  # the folder names say it
        if key in schema.names:
            fixed[key] = value
            continue
        column = next((c for c, prefix in _PACKED.items() if key.startswith(prefix) and c in schema.names),
                      "diagnostics")
        prefix = _PACKED.get(column, "")
        packed[column][key[len(prefix):]] = _json_safe(value)
    for column in ("hparams", "data", "diagnostics"):
        if column in schema.names:
            fixed[column] = json.dumps(packed[column], sort_keys=True)
    return fixed


def _unpack(frame: pd.DataFrame) -> pd.DataFrame:
    """The JSON columns back as hp_<name>, data_<name> and the diagnostics' own columns."""
    for column, prefix in (*_PACKED.items(), ("diagnostics", "")):
        if column not in frame:
            continue
        values = pd.DataFrame([json.loads(v) if isinstance(v, str) else {} for v in frame.pop(column)],
                              index=frame.index)
        if column == "diagnostics":
            values = values.astype(float)  # a diagnostic that could not be computed was stored as null
        frame = pd.concat([frame, values.add_prefix(prefix)], axis=1)
    return frame


def run_table(row: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist([_pack(row, RUN_SCHEMA)], schema=RUN_SCHEMA)


def epochs_table(epochs: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([_pack(e, EPOCH_SCHEMA) for e in epochs], schema=EPOCH_SCHEMA)


def read_row(paths: RunPaths) -> pd.Series:
    """One finished run's row, unpacked (dataset and method included)."""
    return _frame(pq.read_table(paths.row), paths.row).iloc[0]


def _read_row(path: Path) -> pa.Table | str:
    """The run row in `path`, or why it cannot be used."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable parquet file ({str(exc).splitlines()[0][:80]})"
    if table.num_rows != 1 or not {"run_id", "config_json", "final_acc"} <= set(table.column_names):
        return "not an mmbench run row (one row with run_id, config_json and final_acc)"
    if table["run_id"][0].as_py() != path.stem:
        return f"its run_id {table['run_id'][0].as_py()!r} is not its file name"
    return table


def _frame(table: pa.Table, path: Path) -> pd.DataFrame:
    """A stored table as the readers return it: JSON columns unpacked, dataset and method added."""
    frame = _unpack(table.to_pandas())
    for level, name in ((path.parent, "method"), (path.parent.parent, "dataset")):
        frame.insert(0, name, level.name.partition("=")[2])
    return frame


def _read_side(path: Path) -> pa.Table | str:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable parquet file ({str(exc).splitlines()[0][:80]})"


def unreadable_note(path: Path, reason: str) -> str:
    """One line per skipped file, saying what to do."""
    return f"skipped {path}: {reason}; delete it and run the same `mmbench run` again to retrain that run"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path, older_than_s: float = 3600.0) -> None:
    """Temporary files of `path` that a killed writer left behind (an hour old: no writer is still on them)."""
    import time

    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > older_than_s:
                stale.unlink()
        except OSError:
            pass  # another process removed it first


def write_table(path: Path, table: pa.Table) -> None:
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(payload, indent=2, default=str))
    _atomic_write(path, write)


def write_run(paths: RunPaths, row: dict[str, Any], epochs: list[dict[str, Any]],
              preds: dict[str, list]) -> None:
    """Side tables first, the run row last: a run row on disk means a complete run."""
    write_epochs(paths, epochs)
    write_table(paths.preds, pa.table(preds))
    write_table(paths.row, run_table(row))
    paths.failed.unlink(missing_ok=True)


def write_epochs(paths: RunPaths, epochs: list[dict[str, Any]]) -> None:
    """The epoch table so far; rewritten after every epoch, so a running or killed run shows its curve."""
    write_table(paths.epochs, epochs_table(epochs))


def config_columns(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat columns: core keys as they are, hp_<name>, data_<name>."""
    columns = {k: _scalar(v) for k, v in cfg.to_dict().items() if k not in ("hparams", "data")}
    columns.update({f"hp_{k}": _scalar(v) for k, v in cfg.hparams.items()})
    columns.update({f"data_{k}": _scalar(v) for k, v in cfg.data.items()})
    columns["config_json"] = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return columns


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else json.dumps(value)


def _tables(out: str | Path, table: str) -> list[Path]:
    root = Path(out)
    migrate_legacy_layout(root)
    return sorted((root / table).glob("dataset=*/method=*/*.parquet"))


def read_runs(out: str | Path) -> pd.DataFrame:
    """Every finished run row under `out` (columns unified across methods). A file that cannot be
    read, or is not a run row, is left out and listed in `.attrs["unreadable"]` (one line each)."""
    return _read_all(_tables(out, "runs"), _read_row)


def read_epochs(out: str | Path) -> pd.DataFrame:
    return _read_all(_tables(out, "epochs"), _read_side)


def _read_all(files: list[Path], read: Any) -> pd.DataFrame:
    frames, unreadable = [], []
    for path in files:
        table = read(path)
        if isinstance(table, str):
            unreadable.append(unreadable_note(path, table))
        else:
            frames.append(_frame(table, path))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame.attrs["unreadable"] = unreadable
    return frame


def read_preds(paths: RunPaths) -> pd.DataFrame:
    return pq.read_table(paths.preds).to_pandas()


_LEGACY_SUFFIXES = ((".epochs.parquet", "epochs"), (".preds.parquet", "preds"), (".config.yaml", "configs"),
                    (".failed.json", "failed"), (".parquet", "runs"))  # the run row last
_NEW_SUFFIX = {"configs": ".yaml", "failed": ".json"}
_migrated: set[Path] = set()


def migrate_legacy_layout(root: Path) -> int:
    """Move the runs of the first layout (`<root>/dataset=*/method=*/<run_id>.*`) into the per-table
    roots, rewriting run rows and epoch tables into their fixed schemas; returns the runs moved. Once
    per folder and process; processes that start at once take turns (a lock in `<root>/.locks/`), so
    none sees a half-moved run and trains it again."""
    key = root.resolve() if root.exists() else root
    if key in _migrated or not any(root.glob("dataset=*/method=*")):
        _migrated.add(key)
        return 0
    try:
        with _exclusive(root / ".locks" / "layout.lock"):
            moved = _migrate(root)
    except PermissionError as exc:
        raise ConfigError(f"{root}: its runs are in mmbench's first results layout (dataset=*/method=* at the "
                          f"top), which is moved into runs/, epochs/, preds/ on first use, but {exc.filename} "
                          "cannot be changed; make the folder writable once, or copy it and use the copy") from None
    _migrated.add(key)
    return moved


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _migrate(root: Path) -> int:
    legacy = sorted(root.glob("dataset=*/method=*/*"))
    moved = 0
    for suffix, table in _LEGACY_SUFFIXES:
        for path in legacy:
            if path.name.startswith(".") or not path.name.endswith(suffix) or \
                    path.name.count(".") != suffix.count("."):
                continue
            run_id = path.name[: -len(suffix)]
            dataset, method = (p.name.partition("=")[2] for p in (path.parent.parent, path.parent))
            target = RunPaths(root, dataset, method, run_id)._file(table, _NEW_SUFFIX.get(table, ".parquet"))
            moved += _move_legacy(path, target, table)
    for folder in sorted(root.glob("dataset=*/method=*")) + sorted(root.glob("dataset=*")):
        with contextlib.suppress(OSError):  # not empty (e.g. a dead writer's temporary file): left as it is
            folder.rmdir()
    return moved


def _move_legacy(path: Path, target: Path, table: str) -> int:
    try:
        try:
            records = pq.read_table(path).to_pylist() if table in ("runs", "epochs") else None
        except (OSError, pa.ArrowException):
            records = None  # moved as it is: the readers list it as unreadable, with what to do
        if records:
            write_table(target, run_table(records[0]) if table == "runs" else epochs_table(records))
            path.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except FileNotFoundError:
        return 0  # another process moved it first
    return int(table == "runs")

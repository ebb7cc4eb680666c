"""Result files: layout, atomic writes, "already done" checks, reading back.

Per run, under `<out>/dataset=<d>/method=<m>/`:
  <run_id>.parquet         one row: resolved config, final / best-val / paper metrics, provenance
  <run_id>.epochs.parquet  one row per epoch: curves, per-modality accuracy, method diagnostics
  <run_id>.preds.parquet   one row per test sample and selection: labels and predictions
  <run_id>.config.yaml     the resolved config, written when the run starts (`run --config` reads it)
  <run_id>.failed.json     only for a run that failed (removed when it later succeeds)
The run row is written last, so its presence means the run finished. Every file is written
to a dot-prefixed temporary file in the same folder and renamed (readers skip dot files).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmbench.config import RunConfig


@dataclass(frozen=True)
class RunPaths:
    folder: Path
    run_id: str

    @property
    def row(self) -> Path:
        return self.folder / f"{self.run_id}.parquet"

    @property
    def epochs(self) -> Path:
        return self.folder / f"{self.run_id}.epochs.parquet"

    @property
    def preds(self) -> Path:
        return self.folder / f"{self.run_id}.preds.parquet"

    @property
    def config(self) -> Path:
        """The resolved config as YAML, accepted by `mmbench run --config` as it is."""
        return self.folder / f"{self.run_id}.config.yaml"

    @property
    def failed(self) -> Path:
        return self.folder / f"{self.run_id}.failed.json"

    @property
    def checkpoint_dir(self) -> Path:
        # Two levels up is the results root; checkpoints stay out of the hive folders.
        return self.folder.parent.parent / ".checkpoints" / self.run_id


def run_paths(out: str | Path, cfg: RunConfig) -> RunPaths:
    folder = Path(out) / f"dataset={cfg.dataset}" / f"method={cfg.method}"
    return RunPaths(folder, cfg.run_id)


def is_done(paths: RunPaths) -> bool:
    """A finished run is one whose three files read back and whose row is this run's, not merely a
    run row on disk: a truncated or foreign file is trained again (and replaced)."""
    if not paths.row.is_file():
        return False
    try:
        pq.read_metadata(paths.epochs)
        pq.read_metadata(paths.preds)
    except (OSError, pa.ArrowException):
        return False
    return not isinstance(_read_row(paths.row), str)


def _read_row(path: Path) -> pa.Table | str:
    """The run row in `path`, or why it cannot be used."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable parquet file ({str(exc).splitlines()[0][:80]})"
    if table.num_rows != 1 or "run_id" not in table.column_names or "method" not in table.column_names:
        return "not an mmbench run row (one row with run_id and method)"
    if table["run_id"][0].as_py() != path.stem:
        return f"its run_id {table['run_id'][0].as_py()!r} is not its file name"
    return table


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
    write_table(paths.row, pa.Table.from_pylist([row]))
    paths.failed.unlink(missing_ok=True)


def write_epochs(paths: RunPaths, epochs: list[dict[str, Any]]) -> None:
    """The epoch table so far; rewritten after every epoch, so a running or killed run shows its curve."""
    # Columns are the union over epochs: a diagnostic may start only after a warm-up.
    write_table(paths.epochs, pa.Table.from_pandas(pd.DataFrame(epochs), preserve_index=False))


def config_columns(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat columns: core keys as they are, hp_<name>, data_<name>."""
    columns = {k: v for k, v in cfg.to_dict().items() if k not in ("hparams", "data")}
    columns.update({f"hp_{k}": _scalar(v) for k, v in cfg.hparams.items()})
    columns.update({f"data_{k}": _scalar(v) for k, v in cfg.data.items()})
    columns["config_json"] = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return columns


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else json.dumps(value)


def _tables(out: str | Path, suffix: str) -> list[Path]:
    root = Path(out)
    files = sorted(root.glob(f"dataset=*/method=*/*{suffix}"))
    if suffix == ".parquet":
        files = [f for f in files if f.name.count(".") == 1]
    return files


def read_runs(out: str | Path) -> pd.DataFrame:
    """Every finished run row under `out` (columns unified across methods). A file that cannot be
    read, or is not a run row, is left out and listed in `.attrs["unreadable"]` (one line each)."""
    return _read_all(_tables(out, ".parquet"), _read_row)


def read_epochs(out: str | Path) -> pd.DataFrame:
    return _read_all(_tables(out, ".epochs.parquet"), _read_side)


def _read_all(files: list[Path], read: Any) -> pd.DataFrame:
    tables, unreadable = [], []
    for path in files:
        table = read(path)
        if isinstance(table, str):
            unreadable.append(unreadable_note(path, table))
        else:
            tables.append(table)
    frame = pa.concat_tables(tables, promote_options="permissive").to_pandas() if tables else pd.DataFrame()
    frame.attrs["unreadable"] = unreadable
    return frame


def read_preds(paths: RunPaths) -> pd.DataFrame:
    return pq.read_table(paths.preds).to_pandas()

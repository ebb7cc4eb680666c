"""The results folder as other tools read it (issue 15.8): one hive-partitioned root per table, so that
the obvious pandas and DuckDB one-liners read one schema, and folders of the first layout are moved."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmbench import results
from mmbench.results import migrate_legacy_layout, read_epochs, read_runs, run_paths
from mmbench.train import engine

from .conftest import tiny_config

CONFIGS = [tiny_config("joint", 0, epochs=1), tiny_config("arm", 1, epochs=1), tiny_config("ogm-ge", 0, epochs=1)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    for cfg in CONFIGS:
        engine.run(cfg, out)
    return out


def test_pandas_reads_each_table_as_one_schema_with_every_run(folder):
    """Before: `pd.read_parquet("results")` returned the epochs schema with predictions mixed in and the run
    metrics gone, because three schemas shared one folder (and arm's columns differ from joint's)."""
    runs = pd.read_parquet(folder / "runs")
    assert sorted(zip(runs["method"].astype(str), runs["seed"], strict=True)) == [("arm", 1), ("joint", 0),
                                                                                  ("ogm-ge", 0)]
    assert runs["final_acc"].notna().all() and set(runs["dataset"].astype(str)) == {"synthetic"}
    by_method = runs.set_index(runs["method"].astype(str))
    assert json.loads(by_method.loc["arm", "hparams"])["bins"] == 30  # method settings survive as JSON
    assert json.loads(by_method.loc["ogm-ge", "hparams"])["alpha"] == CONFIGS[2].hparams["alpha"]
    epochs = pd.read_parquet(folder / "epochs")
    assert len(epochs) == len(CONFIGS) and "final_acc" not in epochs and epochs["test_acc"].notna().all()
    preds = pd.read_parquet(folder / "preds")
    assert len(preds) == sum(2 * cfg.data["n_test"] for cfg in CONFIGS)


def test_duckdb_reads_the_runs_with_hive_partitioning(folder):
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT method, seed, final_acc, hparams->>'bins' AS bins FROM read_parquet("
                      f"'{folder}/runs/**/*.parquet', hive_partitioning=true) ORDER BY method").fetchall()
    mine = read_runs(folder).sort_values("method")
    assert [r[:3] for r in rows] == list(zip(mine["method"], mine["seed"], mine["final_acc"], strict=True))
    assert [r[3] for r in rows] == ["30", None, None]


def test_every_file_of_a_table_has_the_tables_schema(folder):
    for path in (folder / "runs").rglob("*.parquet"):
        assert pq.read_schema(path).equals(results.RUN_SCHEMA, check_metadata=False), path
    for path in (folder / "epochs").rglob("*.parquet"):
        assert pq.read_schema(path).equals(results.EPOCH_SCHEMA, check_metadata=False), path


def test_the_readers_unpack_method_settings_and_diagnostics_into_columns(folder):
    runs = read_runs(folder).set_index("method")
    assert runs.loc["arm", "hp_bins"] == 30 and runs.loc["ogm-ge", "hp_alpha"] == CONFIGS[2].hparams["alpha"]
    assert runs.loc["joint", "data_n_train"] == CONFIGS[0].data["n_train"]
    assert runs["final_d1_weight_norm_ratio"].dtype == float  # NaN for arm (stored as null) stays NaN
    assert runs.loc[["joint", "ogm-ge"], "final_d1_weight_norm_ratio"].notna().all()
    epochs = read_epochs(folder).set_index("method")
    assert pd.notna(epochs.loc["ogm-ge", "diag_rho"]) and pd.isna(epochs.loc["joint"].get("diag_rho", float("nan")))


def _write_first_layout(new: pd.DataFrame, root, table: str, suffix: str) -> None:
    """A run's table as the first layout stored it: flat columns (dataset and method included) in
    <root>/dataset=<d>/method=<m>/<run_id><suffix>."""
    for (dataset, method, run_id), part in new.groupby(["dataset", "method", "run_id"]):
        target = root / f"dataset={dataset}" / f"method={method}" / f"{run_id}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        part = part.drop(columns=[] if table == "runs" else ["dataset", "method"]).dropna(axis=1, how="all")
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), target)


def test_a_folder_of_the_first_layout_is_moved_and_reads_the_same(folder, tmp_path):
    legacy = tmp_path / "old"
    runs, epochs = read_runs(folder), read_epochs(folder)
    _write_first_layout(runs, legacy, "runs", ".parquet")
    _write_first_layout(epochs, legacy, "epochs", ".epochs.parquet")
    for cfg in CONFIGS:
        new = run_paths(folder, cfg)
        old = legacy / f"dataset={cfg.dataset}" / f"method={cfg.method}"
        (old / f"{cfg.run_id}.preds.parquet").write_bytes(new.preds.read_bytes())
        (old / f"{cfg.run_id}.config.yaml").write_text(new.config.read_text())
    (legacy / "dataset=synthetic" / "method=joint" / "0000000000000000.parquet").write_bytes(b"")  # stays listed

    moved = read_runs(legacy)
    assert sorted(p.name for p in legacy.iterdir() if p.name[0] != ".") == ["configs", "epochs", "preds", "runs"]
    pd.testing.assert_frame_equal(moved.sort_values("run_id").reset_index(drop=True)[runs.columns],
                                  runs.sort_values("run_id").reset_index(drop=True), check_dtype=False)
    assert len(moved.attrs["unreadable"]) == 1 and "0000000000000000" in moved.attrs["unreadable"][0]
    assert len(read_epochs(legacy)) == len(epochs)
    for cfg in CONFIGS:  # a finished run stays finished: nothing is trained again
        assert results.is_done(run_paths(legacy, cfg))
    assert len(pd.read_parquet(legacy / "preds")) == len(pd.read_parquet(folder / "preds"))
    assert migrate_legacy_layout(legacy) == 0


def test_a_read_only_folder_of_the_first_layout_gets_one_line(tmp_path, monkeypatch):
    legacy = tmp_path / "old" / "dataset=synthetic" / "method=joint"
    legacy.mkdir(parents=True)
    (legacy / "abc.preds.parquet").write_bytes(b"x")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "old" / "preds"))

    monkeypatch.setattr(results.os, "replace", refuse)
    with pytest.raises(results.ConfigError, match="first results layout .* make the folder writable once"):
        read_runs(tmp_path / "old")


def test_processes_that_find_a_first_layout_folder_at_once_take_turns(folder, tmp_path):
    """Two sweeps started on an old folder migrate it together: neither may crash on the other's moves
    (a worker failed on an already removed folder) nor see a half-moved run."""
    import subprocess
    import sys

    legacy = tmp_path / "old"
    _write_first_layout(read_runs(folder), legacy, "runs", ".parquet")
    _write_first_layout(read_epochs(folder), legacy, "epochs", ".epochs.parquet")
    probe = f"from mmbench.results import read_runs; print(len(read_runs({str(legacy)!r})))"
    children = [subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(3)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [out.strip() for out, _ in outputs] == [str(len(CONFIGS))] * 3, outputs
    assert not list(legacy.glob("dataset=*"))

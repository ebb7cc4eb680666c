"""`--log tensorboard|wandb|mlflow` (issue 15.5): every finished epoch and the run's results reach the
tracker, a failed run is closed as failed, and a tracker whose package is missing is refused at once."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import pytest
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import ConfigError
from mmbench.results import read_epochs, read_runs
from mmbench.train import engine

from .conftest import tiny_config


def test_tensorboard_gets_every_epoch_and_the_results(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(epochs=3, log="tensorboard")
    engine.run(cfg, tmp_path)
    logdir = tmp_path / "tensorboard" / f"synthetic-joint-seed0-{cfg.run_id}"
    events = EventAccumulator(str(logdir))
    events.Reload()
    test_acc = [(e.step, e.value) for e in events.Scalars("test_acc")]
    epochs = read_epochs(tmp_path)
    assert [step for step, _ in test_acc] == [1, 2, 3]  # epochs count from 1
    assert [value for _, value in test_acc] == pytest.approx(epochs["test_acc"].tolist(), abs=1e-6)
    row = read_runs(tmp_path).iloc[0]
    assert events.Scalars("result/final_acc")[0].value == pytest.approx(row["final_acc"], abs=1e-6)
    assert row["log"] == "tensorboard" and cfg.run_id == tiny_config(epochs=3).run_id  # not in the identity


class _Recorder:
    """A stand-in for a tracker's package: records every call by name."""

    def __init__(self, name: str) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.module = types.ModuleType(name)
        self.module.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def function(self, name: str, result: Any = None) -> None:
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result
        setattr(self.module, name, call)

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for n, args, kwargs in self.calls if n == name]


@pytest.fixture
def fake_trackers(monkeypatch):
    wandb, mlflow = _Recorder("wandb"), _Recorder("mlflow")
    run = types.SimpleNamespace(summary={})
    run.log = lambda metrics, step: wandb.calls.append(("log", (metrics,), {"step": step}))
    run.finish = lambda exit_code: wandb.calls.append(("finish", (), {"exit_code": exit_code}))
    wandb.function("init", run)
    for name in ("set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "end_run"):
        mlflow.function(name)
    monkeypatch.setitem(sys.modules, "wandb", wandb.module)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow.module)
    return wandb, mlflow, run


def test_wandb_and_mlflow_get_each_epoch_and_the_results(tmp_path, fake_trackers):
    wandb, mlflow, wandb_run = fake_trackers
    cfg = tiny_config(epochs=2, log="wandb,mlflow")
    row = engine.run(cfg, tmp_path)
    epochs = read_epochs(tmp_path)

    (_, init), = wandb.named("init")
    assert init["id"] == cfg.run_id and init["resume"] == "allow" and init["config"]["seed"] == 0
    logged = wandb.named("log")
    assert [kwargs["step"] for _, kwargs in logged] == [1, 2]
    assert [args[0]["test_acc"] for args, _ in logged] == epochs["test_acc"].tolist()
    assert wandb_run.summary["final_acc"] == row["final_acc"] and wandb.named("finish")[0][1] == {"exit_code": 0}

    assert mlflow.named("set_tracking_uri")[0][0][0] == (tmp_path / "mlruns").resolve().as_uri()
    assert mlflow.named("start_run")[0][1]["tags"]["mmbench.run_id"] == cfg.run_id
    params = mlflow.named("log_params")[0][0][0]
    assert params["lr"] == str(cfg.lr) and params["data.n_train"] == str(cfg.data["n_train"])
    per_epoch = [(args[0], kwargs.get("step")) for args, kwargs in mlflow.named("log_metrics")]
    assert [step for _, step in per_epoch] == [1, 2, None]
    assert per_epoch[-1][0]["result.final_acc"] == row["final_acc"]
    assert mlflow.named("end_run")[0][1] == {"status": "FINISHED"}


def test_a_failed_run_is_closed_as_failed(tmp_path, fake_trackers, monkeypatch):
    wandb, mlflow, _ = fake_trackers

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine, "evaluate", broken)
    with pytest.raises(engine.RunFailed, match="disk on fire"):
        engine.run(tiny_config(epochs=1, log="wandb,mlflow"), tmp_path)
    assert wandb.named("finish")[0][1] == {"exit_code": 1}
    assert mlflow.named("end_run")[0][1] == {"status": "FAILED"}


def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(tmp_path):
    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    result = CliRunner().invoke(app, ["run", "-m", "joint", "--log", "mlflow", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert 'the mlflow package is not installed; pip install "mmbench[mlflow]"' in result.output
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        tiny_config(log="tensorbord")

"""`mmbench sweep` with the local backend: expansion, GPU assignment and packing (fake GPUs),
crash isolation, retries, resume after the scheduler is killed, Ctrl-C, and the run lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import ConfigError, SweepConfig
from mmbench.results import read_runs

from .conftest import TINY, interruptible

runner = CliRunner()
SMALL = {k: v for k, v in TINY.items() if k != "num_threads"}


def sweep_file(tmp_path: Path, **content) -> Path:
    data = {"methods": ["joint"], "datasets": ["synthetic"], "seeds": [0, 1], "set": dict(SMALL), **content}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mmbench(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mmbench.cli import main; main()", *args]


def worker_spans(out: Path) -> list[tuple[str, float, float]]:
    """(CUDA_VISIBLE_DEVICES, start, end) of every finished worker, from the logs."""
    spans = []
    for log in (out / "logs").glob("*.log"):
        text = log.read_text()
        for start, device, end in re.findall(r"worker start ([\d.]+) .*?CUDA_VISIBLE_DEVICES=(\S*).*?"
                                             r"worker end ([\d.]+)", text, re.S):
            spans.append((device, float(start), float(end)))
    return spans


def test_sweep_file_expands_the_grid_and_validates(tmp_path):
    path = sweep_file(tmp_path, methods=["joint", "ogm-ge"], grid={"ogm-ge": {"alpha": [0.1, 0.5, 0.8]}})
    configs = SweepConfig.load(path).expand()
    assert len(configs) == 2 + 3 * 2
    assert sorted(c.hparams["alpha"] for c in configs if c.method == "ogm-ge") == [0.1, 0.1, 0.5, 0.5, 0.8, 0.8]
    assert all(c.epochs == SMALL["epochs"] for c in configs)
    (tmp_path / "bad.yaml").write_text("methods: [joint]\ndatasets: [synthetic]\nseed: [0]\n")
    with pytest.raises(ConfigError, match="did you mean seeds"):
        SweepConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not in `methods`"):
        SweepConfig.load(sweep_file(tmp_path, grid={"opm": {"q_base": [0.1]}}))
    with pytest.raises(ConfigError, match="alpah"):
        SweepConfig.load(sweep_file(tmp_path, methods=["ogm-ge"], grid={"ogm-ge": {"alpah": [0.1]}})).expand()


@pytest.mark.parametrize("content, message", [
    ("methods: [joint]\ndatasets: [synthetic]\nset: [1, 2]\n", "`set` maps keys to values, e.g. {epochs"),
    ("methods: [joint]\ndatasets: [synthetic]\nset: epochs=3\n", "`set` maps keys to values"),
    ("methods: [1]\ndatasets: [synthetic]\n", "`methods` must list at least one name, e.g. [joint, opm]"),
    ("methods: joint\ndatasets: {a: 1}\n", "`datasets` must list at least one name"),
    ("methods: [joint]\ndatasets: [synthetic]\nseeds: [1.5]\n", "--seeds [1.5]: expected integers"),
    (b"methods: [joint]\n\xff\xfe: 1\n", "not UTF-8 text; save it as UTF-8"),
])
def test_a_sweep_file_of_the_wrong_shape_fails_in_one_line(tmp_path, content, message):
    """Issue 15.20: these were tracebacks (and a float seed was truncated)."""
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_run_config_of_the_wrong_shape_fails_in_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: 5\n")
    result = runner.invoke(app, ["run", "--config", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "`method` must be a name (a string), e.g. method: joint" in result.output


def test_dry_run_lists_runs_and_what_is_done(tmp_path):
    path = sweep_file(tmp_path)
    out = tmp_path / "results"
    first = runner.invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert first.exit_code == 0 and "2 runs, 0 already done" in first.output and "to run" in first.output
    assert not out.exists() or not list(out.rglob("*.parquet"))


@pytest.mark.slow
def test_fake_gpus_get_their_runs_packed_and_isolated(tmp_path):
    path = sweep_file(tmp_path, seeds=[0, 1, 2, 3])
    out = tmp_path / "results"
    done = subprocess.run(mmbench("sweep", str(path), "--out", str(out), "--gpus", "3,5", "--runs-per-gpu", "2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    spans = worker_spans(out)
    assert len(spans) == 4 and {device for device, _, _ in spans} == {"3", "5"}
    for gpu in ("3", "5"):
        mine = [(s, e) for d, s, e in spans if d == gpu]
        peak = max(sum(1 for s2, e2 in mine if s2 <= s < e2) for s, _ in mine)
        assert 1 <= peak <= 2
    assert len(read_runs(out)) == 4


CRASHY = textwrap.dedent('''
    import os, signal
    from pathlib import Path
    from mmbench.method import Method
    from mmbench.registry import register_method

    @register_method
    class Crashy(Method):
        name = "crashy"
        description = "joint training that segfaults on seed 1, and fails once on seed 2"

        def on_epoch_start(self, model, ctx):
            if ctx.cfg.seed == 1:
                os.kill(os.getpid(), signal.SIGSEGV)
            marker = Path(os.environ["CRASHY_MARKER"])
            if ctx.cfg.seed == 2 and not marker.exists():
                marker.write_text("failed once")
                raise RuntimeError("first attempt fails")
''')


@pytest.mark.slow
def test_a_crashing_run_stops_nothing_else_and_retries_are_counted(tmp_path):
    plugin = tmp_path / "crashy.py"
    plugin.write_text(CRASHY)
    path = sweep_file(tmp_path, methods=["crashy"], seeds=[0, 1, 2])
    out = tmp_path / "results"
    env = {**os.environ, "CRASHY_MARKER": str(tmp_path / "marker")}
    done = subprocess.run(mmbench("sweep", str(path), "--out", str(out), "--jobs", "2", "--retries", "1",
                                  "--plugin", str(plugin)), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 1
    assert sorted(read_runs(out)["seed"]) == [0, 2]  # seed 2 succeeded on its retry
    failed = json.loads(next(out.glob("failed/*/*/*.json")).read_text())
    assert "SIGSEGV" in failed["worker"] and failed["attempts"] == 2 and Path(failed["log"]).exists()
    assert "failed: crashy synthetic seed 1" in done.stderr and "SIGSEGV" in done.stderr
    assert "retrying crashy synthetic seed 2" in done.stdout


def test_run_of_several_methods_survives_a_segfaulting_one(tmp_path):
    """Issue 15.22: `run -m A,B` without --jobs trained in the CLI process, so a segfaulting method killed
    the command (rc 139, no message, no failure record) and B never ran. Each run now has its own worker
    process when there are several; the epochs still show and the crash is recorded."""
    plugin = tmp_path / "crashy.py"
    plugin.write_text(CRASHY)
    out = tmp_path / "results"
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    done = subprocess.run(mmbench("run", "-m", "crashy,joint", "--seeds", "1", "--out", str(out), "--plugin",
                                  str(plugin), *sets, "--epochs", "1"), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CRASHY_MARKER": str(tmp_path / "marker")})
    assert done.returncode == 1, done.stdout + done.stderr
    assert read_runs(out)["method"].tolist() == ["joint"]  # the method after the crash still ran
    failed = json.loads(next(out.glob("failed/*/method=crashy/*.json")).read_text())
    assert "SIGSEGV" in failed["worker"]
    assert "failed: crashy seed 1" in done.stderr and "1 of 2 runs failed" in done.stderr
    assert "joint seed 1: test acc" in done.stdout and "epoch 1/1" in done.stdout  # the worker's epoch lines


def _wait_for(predicate, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def _finished(out: Path) -> list[Path]:
    # only the result folders: a worker removes `.checkpoints/` while this may be walking it
    return list(out.glob("runs/dataset=*/method=*/*.parquet"))


@pytest.mark.slow
def test_resume_after_the_scheduler_is_killed(tmp_path):
    path = sweep_file(tmp_path, seeds=[0, 1, 2], set={**SMALL, "epochs": 4})
    out = tmp_path / "results"
    sweep = subprocess.Popen(mmbench("sweep", str(path), "--out", str(out), "--jobs", "1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: len(_finished(out)) >= 1)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    first = {p: p.stat().st_mtime_ns for p in _finished(out)}
    _wait_for(lambda: not any(_running_workers(out)), timeout=30)  # workers die with their scheduler
    again = subprocess.run(mmbench("sweep", str(path), "--out", str(out), "--jobs", "1"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(_finished(out)) == 3
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in first.items())
    assert f"{len(first)} already done" in again.stdout


def _running_workers(out: Path) -> list[str]:
    listing = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "mmbench.scheduler.worker" in line and str(out) in line]


@pytest.mark.slow
def test_ctrl_c_ends_the_workers_and_keeps_finished_runs(tmp_path):
    # runs long enough (about 6 s each) that a busy machine's polling cannot miss the second one
    path = sweep_file(tmp_path, seeds=[0, 1, 2], set={**SMALL, "epochs": 24})
    out = tmp_path / "results"
    sweep = subprocess.Popen(mmbench("sweep", str(path), "--out", str(out), "--jobs", "1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    _wait_for(lambda: len(_finished(out)) >= 1 and _running_workers(out))
    sweep.send_signal(signal.SIGINT)
    stdout, stderr = sweep.communicate(timeout=180)
    assert sweep.returncode == 130, stdout + stderr
    assert "run the same command again" in stderr
    assert not _running_workers(out)
    kept = len(_finished(out))
    assert 1 <= kept < 3
    again = subprocess.run(mmbench("sweep", str(path), "--out", str(out), "--jobs", "1"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len(_finished(out)) == 3


@pytest.mark.slow
def test_two_sweeps_on_one_folder_run_each_run_once(tmp_path):
    path = sweep_file(tmp_path, seeds=[0, 1])
    out = tmp_path / "results"
    sweeps = [subprocess.Popen(mmbench("sweep", str(path), "--out", str(out), "--jobs", "1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    summaries = []
    for sweep in sweeps:
        stdout, _ = sweep.communicate(timeout=600)
        assert sweep.returncode == 0
        summaries.append(re.search(r"sweep: (\d+) runs finished now, (\d+) were already done, 0 failed", stdout))
    trainings = sum(log.read_text().count("worker end") for log in (out / "logs").glob("*.log"))
    assert trainings == 2 and len(_finished(out)) == 2
    # issue 15.23: each sweep counted the other's runs as its own; now the two say 2 trainings in all
    assert all(summaries), summaries
    assert sum(int(m[1]) for m in summaries) == 2 and all(int(m[1]) + int(m[2]) == 2 for m in summaries)

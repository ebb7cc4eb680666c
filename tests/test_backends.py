"""The scheduling options and the SLURM and Ray backends.

The SLURM tests need a real SLURM (`.ci/slurm-localhost up` starts one on this machine with two
fake GPUs); the Ray tests start a local Ray cluster on 127.0.0.1. Both check that a sweep gives
exactly the results of the local backend for the same runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import ConfigError, SweepConfig
from mmbench.results import is_done, read_runs, run_paths
from mmbench.scheduler.backends import SchedulingOptions, parse_key_values, slurm_options
from mmbench.scheduler.local import LocalScheduler, Slots

from .conftest import TINY, interruptible

runner = CliRunner()
SWEEP = {"methods": ["joint", "opm"], "datasets": ["synthetic"], "seeds": [0, 1], "set": dict(TINY)}


def mmbench(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mmbench.cli import main; main()", *args]


def write_sweep(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def assert_same_results(out: Path, reference: Path) -> None:
    """Same runs, same numbers, same per-sample predictions."""
    rows, ref = read_runs(out).set_index("run_id"), read_runs(reference).set_index("run_id")
    assert sorted(rows.index) == sorted(ref.index)
    columns = ["best_val_acc", "best_val_epoch", "final_acc", "paper_max_acc", "best_val_acc_head_v"]
    pd.testing.assert_frame_equal(rows.loc[ref.index, columns], ref[columns])
    for cfg in SweepConfig.load(out.parent / "sweep.yaml").expand():
        pd.testing.assert_frame_equal(pd.read_parquet(run_paths(out, cfg).preds),
                                      pd.read_parquet(run_paths(reference, cfg).preds))


def devices_seen(out: Path) -> list[str]:
    return [line.split("CUDA_VISIBLE_DEVICES=")[1].split()[0] for log in (out / "logs").glob("*.log")
            for line in log.read_text().splitlines() if line.startswith("worker start")]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> Path:
    """The sweep's runs trained directly in this process, the reference for the backends (the local
    backend's own tests are in tests/test_sweep.py; a worker process per run would cost ~5 s each here)."""
    from mmbench.train import engine

    folder = tmp_path_factory.mktemp("local")
    configs = SweepConfig.load(write_sweep(folder / "sweep.yaml")).expand()
    assert len(configs) == 4
    for cfg in configs:
        engine.run(cfg, folder / "results")
    return folder / "results"


# --- options ------------------------------------------------------------------------------------

def test_gpu_memory_decides_how_many_runs_share_a_gpu():
    slots = Slots.plan(None, ["0", "1"], None, gpu_mem=20, gpu_total={"0": 80.0, "1": 40.0})
    assert slots.devices.count("0") == 3 and slots.devices.count("1") == 1  # 95 % of 80 GB = 76 -> 3 runs
    assert Slots.plan(None, ["0", "1"], 2).devices == ("0", "0", "1", "1")
    with pytest.raises(ValueError, match="more than this GPU's 16.0 GB"):
        Slots.plan(None, ["0"], None, gpu_mem=24, gpu_total={"0": 16.0})


@pytest.mark.parametrize("options, message", [
    (SchedulingOptions(slurm={"partition": "gpu"}), "--slurm settings are for --backend slurm"),
    (SchedulingOptions(wait=False), "--no-wait is for --backend slurm"),
    (SchedulingOptions(backend="slurm", address="10.0.0.1:6379"), "--address is for --backend ray"),
    (SchedulingOptions(gpu_mem=10, runs_per_gpu=2), "replaces --runs-per-gpu"),
    (SchedulingOptions(backend="ray", jobs=2), "--jobs and --gpus are for --backend local"),
    (SchedulingOptions(backend="slurm", gpu_mem=12), "--gpu-mem is for --backend local"),
    (SchedulingOptions(backend="slurm", runs_per_gpu=2), "SLURM gives each run whole GPUs"),
    (SchedulingOptions(gpus=["0"], jobs=2), "with GPUs use --runs-per-gpu"),
    (SchedulingOptions(backend="slurm", slurm={"time_min": "soon"}), "time_min=soon: expected int"),
    (SchedulingOptions(backend="pbs"), "choose one of local, slurm, ray"),
])
def test_scheduling_options_reject_what_cannot_apply(options, message):
    with pytest.raises(ConfigError, match=message):
        options.validate()


def test_slurm_settings_become_sbatch_parameters():
    settings = parse_key_values(["partition=gpu", "time-min=30", "gpus_per_task=2", "mem_gb=16", "account=lab"],
                                "--slurm")
    params = slurm_options(settings).executor_parameters()
    assert params["partition"] == "gpu" and params["time"] == 30 and params["gpus_per_node"] == 2
    assert params["mem"] == "16384M" and params["additional_parameters"] == {"account": "lab"}
    assert "gpus_per_node" not in slurm_options({"gpus_per_task": "0"}).executor_parameters()
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_key_values(["partition"], "--slurm")


def test_a_sweep_file_carries_slurm_settings_that_the_command_line_overrides(tmp_path):
    sweep = SweepConfig.load(write_sweep(tmp_path / "sweep.yaml", slurm={"partition": "gpu", "time-min": 30}))
    assert sweep.slurm == {"partition": "gpu", "time_min": "30"}
    assert slurm_options({**sweep.slurm, **parse_key_values(["time_min=90"], "--slurm")}).time_min == 90
    with pytest.raises(ConfigError, match="`slurm` maps settings"):
        SweepConfig.load(write_sweep(tmp_path / "sweep.yaml", slurm=["gpu"]))


def test_cli_reports_scheduling_mistakes_in_one_line(tmp_path):
    path = write_sweep(tmp_path / "sweep.yaml")
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "r"), "--slurm", "partition=gpu"])
    assert result.exit_code == 2 and "--slurm settings are for --backend slurm" in result.output
    result = runner.invoke(app, ["run", "-m", "joint", "--gpus", "", "--gpu-mem", "8", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--gpus ''" in result.output


@pytest.mark.slow
def test_run_with_several_jobs_goes_through_the_scheduler(tmp_path, local_reference):
    out = tmp_path / "results"
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    done = subprocess.run(mmbench("run", "-m", "joint,opm", "--seeds", "0,1", "--jobs", "2", "--out", str(out),
                                  *sets), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running on 2 CPU job(s)" in done.stdout and len(list((out / "logs").glob("*.log"))) == 4
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    assert_same_results(out, local_reference)


# --- SLURM --------------------------------------------------------------------------------------

def slurm_unavailable() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH: start a single-node SLURM with `.ci/slurm-localhost up` (root)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed: pip install 'mmbench[slurm]'"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.strip():
        return f"SLURM is installed but no controller answers: {probe.stderr.strip()}"
    return None


needs_slurm = pytest.mark.skipif(slurm_unavailable() is not None, reason=str(slurm_unavailable()))
SLURM_ARGS = ("--backend", "slurm", "--slurm", "cpus_per_task=1", "--slurm", "gpus_per_task=1")


@needs_slurm
@pytest.mark.slow
def test_a_slurm_sweep_equals_the_local_one_and_uses_the_allocated_gpus(tmp_path, local_reference):
    path = write_sweep(tmp_path / "sweep.yaml")
    out = tmp_path / "results"
    done = subprocess.run(mmbench("sweep", str(path), "--out", str(out), *SLURM_ARGS),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 4 runs as SLURM job array" in done.stdout
    assert_same_results(out, local_reference)
    assert set(devices_seen(out)) <= {"0", "1"} and len(devices_seen(out)) == 4  # SLURM's GRES, not ours
    again = subprocess.run(mmbench("sweep", str(path), "--out", str(out), *SLURM_ARGS),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "4 runs, 4 already done" in again.stdout and "submitted" not in again.stdout


@needs_slurm
@pytest.mark.slow
def test_no_wait_returns_and_a_second_call_collects_without_resubmitting(tmp_path, local_reference):
    path = write_sweep(tmp_path / "sweep.yaml")
    out = tmp_path / "results"
    started = time.time()
    first = subprocess.run(mmbench("sweep", str(path), "--out", str(out), *SLURM_ARGS, "--no-wait"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "run the same command again" in first.stdout and time.time() - started < 60
    jobs = json.loads((out / ".slurm" / "jobs.json").read_text())
    collect = subprocess.run(mmbench("sweep", str(path), "--out", str(out), *SLURM_ARGS),
                             capture_output=True, text=True, timeout=600)
    assert collect.returncode == 0, collect.stdout + collect.stderr
    assert "submitted" not in collect.stdout
    assert json.loads((out / ".slurm" / "jobs.json").read_text()) == jobs
    assert all(log.read_text().count("--- attempt") == 1 for log in (out / "logs").glob("*.log"))
    assert_same_results(out, local_reference)


@needs_slurm
@pytest.mark.slow
def test_slurm_runs_the_required_runs_first_one_wave_per_no_wait_call(tmp_path):
    """Issue 18: `mmbench run -m g2d` on a clean folder trains the unimodal teachers, then g2d, on SLURM too;
    with --no-wait each call submits the next wave once the one before has finished."""
    from mmbench.train.dependencies import in_waves, run_in_process

    from .conftest import tiny_config

    out = tmp_path / "results"
    args = mmbench("run", "-m", "g2d", "--seeds", "0", "--out", str(out), *SLURM_ARGS,
                   *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")])
    first = subprocess.run([*args, "--no-wait"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted 2 runs as SLURM job array" in first.stdout and "1 wait for runs they require" in first.stdout
    teachers = in_waves([tiny_config("g2d")])[0]
    deadline = time.time() + 300
    while not all(is_done(run_paths(out, t)) for t in teachers) and time.time() < deadline:
        time.sleep(2)
    second = subprocess.run([*args, "--no-wait"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "submitted 1 runs as SLURM job array" in second.stdout, second.stdout
    collect = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert collect.returncode == 0 and "submitted" not in collect.stdout, collect.stdout + collect.stderr
    local = tmp_path / "local"
    run_in_process([tiny_config("g2d")], local)
    rows, reference = read_runs(out).set_index("run_id"), read_runs(local).set_index("run_id")
    assert sorted(rows.index) == sorted(reference.index) and len(rows) == 3
    for cfg in [*teachers, tiny_config("g2d")]:
        pd.testing.assert_frame_equal(pd.read_parquet(run_paths(out, cfg).preds),
                                      pd.read_parquet(run_paths(local, cfg).preds))


@needs_slurm
@pytest.mark.slow
def test_a_preempted_element_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    settings = {**TINY, "epochs": 30}
    path = write_sweep(tmp_path / "sweep.yaml", methods=["joint"], seeds=[0], set=settings)
    out = tmp_path / "results"
    assert subprocess.run(mmbench("sweep", str(path), "--out", str(out), *SLURM_ARGS, "--no-wait"),
                          capture_output=True, text=True, timeout=120).returncode == 0
    cfg = SweepConfig.load(path).expand()[0]
    job_id = json.loads((out / ".slurm" / "jobs.json").read_text())[cfg.run_id]["job_id"]
    checkpoint = run_paths(out, cfg).checkpoint_dir
    deadline = time.time() + 120
    while not (checkpoint.exists() and any(checkpoint.iterdir())):
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends on preemption
    collect = subprocess.run(mmbench("sweep", str(path), "--out", str(out), *SLURM_ARGS),
                             capture_output=True, text=True, timeout=600)
    assert collect.returncode == 0, collect.stdout + collect.stderr
    log = next((out / "logs").glob("*.log")).read_text()
    assert "restart 1" in log and "resuming after epoch" in log
    reference = tmp_path / "local"
    LocalScheduler(reference, Slots.plan(1, None, 1)).run([cfg])
    pd.testing.assert_frame_equal(pd.read_parquet(run_paths(out, cfg).preds),
                                  pd.read_parquet(run_paths(reference, cfg).preds))
    assert read_runs(out)["best_val_acc"].tolist() == read_runs(reference)["best_val_acc"].tolist()


@needs_slurm
@pytest.mark.slow
def test_a_request_no_node_can_meet_is_reported_and_ctrl_c_leaves_the_jobs_queued(tmp_path):
    path = write_sweep(tmp_path / "sweep.yaml", methods=["joint"], seeds=[0])
    out = tmp_path / "results"
    sweep = subprocess.Popen(mmbench("sweep", str(path), "--out", str(out), "--backend", "slurm", "--slurm",
                                     "cpus_per_task=64", "--slurm", "gpus_per_task=0"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    lines: list[str] = []
    def read() -> None:
        for line in sweep.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120  # until a poll of squeue has said why the run waits (slow on a busy machine)
        while not any("runs pending" in line for line in lines) and sweep.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        sweep.send_signal(signal.SIGINT)
        sweep.wait(timeout=180)  # an squeue call in flight finishes first; slow on a busy machine
        reader.join(timeout=10)
        stdout, stderr = "".join(lines), sweep.stderr.read()
    finally:
        for job in json.loads((out / ".slurm" / "jobs.json").read_text()).values():
            subprocess.run(["scancel", job["job_id"].split("_")[0]])
    assert "1 runs pending (PartitionConfig)" in stdout, stdout + stderr
    assert sweep.returncode == 130 and "1 runs are queued or running in SLURM" in stdout


# --- Ray ----------------------------------------------------------------------------------------

try:
    import ray  # noqa: F401
    RAY_MISSING = None
except ImportError:
    RAY_MISSING = "ray is not installed: pip install 'mmbench[ray]'"


@pytest.mark.skipif(RAY_MISSING is not None, reason=str(RAY_MISSING))
@pytest.mark.slow
def test_a_ray_sweep_packs_runs_on_fake_gpus_and_equals_the_local_one(tmp_path, local_reference):
    from mmbench.scheduler.ray_cluster import RayScheduler

    configs = SweepConfig.load(write_sweep(tmp_path / "sweep.yaml")).expand()
    out = tmp_path / "results"
    events = []
    backend = RayScheduler(out, runs_per_gpu=2, cpus_per_run=1, on_event=events.append,
                           init_kwargs={"num_cpus": 2, "num_gpus": 2, "_node_ip_address": "127.0.0.1"})
    summary = backend.run(configs)
    assert summary.done == 4 and not summary.failed, events
    assert "0.5 GPU and 1 CPU per run" in events[0]
    assert set(devices_seen(out)) <= {"0", "1"} and len(devices_seen(out)) == 4  # Ray's assignment
    assert_same_results(out, local_reference)
    assert backend.run(configs).skipped == 4


@pytest.mark.skipif(RAY_MISSING is not None, reason=str(RAY_MISSING))
@pytest.mark.slow
def test_ray_runs_the_required_runs_in_a_wave_before_the_run_that_loads_them(tmp_path):
    from mmbench.scheduler.ray_cluster import RayScheduler
    from mmbench.scheduler.waves import run_waves
    from mmbench.train.dependencies import in_waves, run_in_process

    from .conftest import tiny_config

    out, cfg = tmp_path / "results", tiny_config("umt")
    backend = RayScheduler(out, runs_per_gpu=1, cpus_per_run=1,
                           init_kwargs={"num_cpus": 2, "num_gpus": 0, "_node_ip_address": "127.0.0.1"})
    summary, waiting = run_waves(backend, in_waves([cfg]), out)
    assert summary.done == 3 and not summary.failed and waiting == 0
    run_in_process([cfg], tmp_path / "local")
    pd.testing.assert_frame_equal(pd.read_parquet(run_paths(out, cfg).preds),
                                  pd.read_parquet(run_paths(tmp_path / "local", cfg).preds))


@pytest.mark.skipif(RAY_MISSING is not None, reason=str(RAY_MISSING))
@pytest.mark.slow
def test_the_ray_backend_from_the_command_line_isolates_a_crash(tmp_path):
    from .test_sweep import CRASHY

    plugin = tmp_path / "crashy.py"
    plugin.write_text(CRASHY)
    path = write_sweep(tmp_path / "sweep.yaml", methods=["crashy"], seeds=[0, 1])
    out = tmp_path / "results"
    done = subprocess.run(mmbench("sweep", str(path), "--out", str(out), "--backend", "ray", "--plugin", str(plugin)),
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CRASHY_MARKER": str(tmp_path / "marker")})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Ray (a local cluster on 127.0.0.1)" in done.stdout
    assert read_runs(out)["seed"].tolist() == [0]
    failed = json.loads(next(out.glob("failed/*/*/*.json")).read_text())
    assert "SIGSEGV" in failed["worker"] and "failed: crashy synthetic seed 1" in done.stderr

from __future__ import annotations

import re
import textwrap

import pytest
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.results import read_runs

from .conftest import TINY, tiny_config

runner = CliRunner()
TINY_SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_list_shows_methods_datasets_citations_and_defaults():
    result = invoke("list")
    assert result.exit_code == 0
    for text in ("joint", "unimodal", "modality=audio", "synthetic", "n_train=2400", "Peng et al.",
                 "alpha=0.1 [cremad: 0.8,", "ogm-ge", "opm", "q_base=0.5"):
        assert text in result.output, text
    methods_only = invoke("list", "methods")
    assert "joint" in methods_only.output and "n_train=" not in methods_only.output


def test_list_names_what_the_official_profile_reproduces():
    from mmbench.listing import describe_knobs
    from mmbench.registry import METHODS

    cells = {name: describe_knobs(cls, cls.hparams) for name, cls in METHODS.items()}
    assert "estimator=corrected (official|corrected)" in cells["arm"]
    assert "--profile official also sets: estimator=official" in cells["arm"]
    assert "theta_grad=none (none|official)" in cells["opm"] and "sets: theta_grad=official" in cells["opm"]
    assert "sets: ge=True" in cells["ogm"]
    assert "audio_frontend=aug-stft (cremad), aug-ks-stft (kinetics-sounds); lr_step_at=epoch_start" in cells["aug"]
    assert "arm" in invoke("list", "methods").output


def test_list_rejects_an_unknown_kind():
    result = invoke("list", "model")
    assert result.exit_code == 2 and "choose methods, datasets, core or all" in result.output


def test_list_shows_the_core_keys_with_types_ranges_and_choices_and_takes_json():
    """Issue 15.6."""
    import json

    table = " ".join(invoke("list", "core").output.split())
    assert "lr │ float │ 0.001 │ > 0 │ learning rate" in table
    assert "fusion │ choice │ concat │ concat|sum|film|gated" in table and "lr_gamma │ float │ 0.1 │ (0, 1]" in table
    listing = json.loads(invoke("list", "--json").output)
    assert {"methods", "datasets", "core"} <= set(listing)
    epochs = next(k for k in listing["core"] if k["key"] == "epochs")
    assert epochs == {"key": "epochs", "type": "int", "default": 100, "help": "training epochs",
                      "identity": True, "range": ">= 1"}
    assert next(m for m in listing["methods"] if m["name"] == "ogm-ge")["settings"]["alpha"] == 0.1
    assert invoke("--version").output.startswith("mmbench 0.1.0")


def test_run_writes_each_seed_once_and_recomputes_only_what_is_missing(tmp_path):
    out = str(tmp_path / "results")
    first = invoke("run", "--method", "joint", "--dataset", "synthetic", "--seeds", "0,1,2",
                   "--out", out, *TINY_SETS)
    assert first.exit_code == 0, first.output
    rows = read_runs(out)
    assert sorted(rows["seed"]) == [0, 1, 2]
    assert "joint" in first.output and "± " in first.output  # the summary table
    # epochs count from 1 in every message (issue 15.6): the stored best_val_epoch counts from 0
    shown = sorted(int(e) for e in re.findall(r"best-val epoch (\d+) of 2", first.output))
    assert shown == sorted(rows["best_val_epoch"] + 1) and set(shown) <= {1, 2}
    assert re.findall(r"epoch (\d+)/2", first.output)[:2] == ["1", "2"]

    again = invoke("run", "--method", "joint", "--seeds", "0,1,2", "--out", out, *TINY_SETS)
    assert again.output.count("already done") == 3
    assert read_runs(out)["finished_at"].tolist() == rows["finished_at"].tolist()

    row_file = next((tmp_path / "results").glob("runs/dataset=synthetic/method=joint/*.parquet"))
    row_file.unlink()
    third = invoke("run", "--method", "joint", "--seeds", "0,1,2", "--out", out, *TINY_SETS)
    assert third.output.count("already done") == 2
    assert len(read_runs(out)) == 3


def test_several_methods_and_hyphen_or_underscore_names(tmp_path):
    out = str(tmp_path / "results")
    result = invoke("run", "-m", "joint,UNIMODAL", "--seeds", "0", "--out", out, *TINY_SETS,
                    "--set", "modality=visual", "--epochs", "1")
    assert result.exit_code == 0, result.output
    rows = read_runs(out)
    assert sorted(rows["method"]) == ["joint", "unimodal"]
    assert set(rows["epochs"]) == {1}


def test_unknown_method_fails_with_the_closest_match(tmp_path):
    result = invoke("run", "--method", "jiont", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "unknown method 'jiont': did you mean joint?" in result.output


def test_bad_set_fails_with_one_line_and_runs_nothing(tmp_path):
    result = invoke("run", "--method", "joint", "--out", str(tmp_path), "--set", "lerning_rate=0.1")
    assert result.exit_code == 2
    assert "unknown key 'lerning_rate'" in result.output
    assert not (tmp_path / "runs").exists()


def test_yaml_config_sets_method_seeds_and_values(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent("""
        method: unimodal
        seeds: [4]
        modality: visual
        epochs: 1
    """) + "".join(f"{k}: {v}\n" for k, v in TINY.items() if k != "epochs"))
    result = invoke("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    row = read_runs(tmp_path / "r").iloc[0]
    assert (row["method"], row["seed"], row["hp_modality"], row["epochs"]) == ("unimodal", 4, "visual", 1)


def test_plugin_option_adds_a_method(tmp_path):
    plugin = tmp_path / "plugin_cli.py"
    plugin.write_text(textwrap.dedent('''
        from mmbench.method import Method
        from mmbench.registry import register_method

        @register_method
        class Frozen(Method):
            name = "frozen_audio"
            description = "joint training with the audio encoder frozen"

            def parameters(self, model, ctx):
                return [p for n, p in model.named_parameters() if not n.startswith("audio_encoder")]
    '''))
    listed = invoke("list", "methods", "--plugin", str(plugin))
    assert "frozen-audio" in listed.output
    result = invoke("run", "-m", "frozen_audio", "--seeds", "0", "--epochs", "1", "--plugin", str(plugin),
                    "--out", str(tmp_path / "r"), *TINY_SETS)
    assert result.exit_code == 0, result.output
    assert read_runs(tmp_path / "r")["method"].tolist() == ["frozen-audio"]


def test_cuda_on_a_machine_without_it_fails_before_any_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("run", "-m", "joint", "--device", "cuda", "--out", str(tmp_path))
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--seeds", "a"], "--seeds 'a'"),
    (["--profile", "paper"], "profile='paper' is not allowed"),
    (["--config", "missing.yaml"], "missing.yaml: no such file"),
    (["--plugin", "missing.py"], "no such file"),
    (["--epochs", "0"], "epochs=0 is out of range: it must be >= 1"),
    (["--set", "epochs=-1"], "epochs=-1 is out of range"),
    (["--set", "lr=-1"], "lr=-1.0 is out of range: it must be > 0"),
    (["--seeds=-1"], "seeds are 0 or more"),
])
def test_bad_options_are_reported_in_one_line(tmp_path, args, message):
    result = invoke("run", "-m", "joint", "--out", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_help_imports_neither_torch_nor_pandas():
    """Issue 15.2: `mmbench --help` took 11-26 s because every command imported torch and pandas."""
    import subprocess
    import sys

    probe = ("import sys; from typer.testing import CliRunner; from mmbench.cli import app; "
             "outputs = [CliRunner().invoke(app, args).output for args in (['--help'], ['run', '--help'], "
             "['report', '--help'], ['check', '--help'])]; "
             "assert all('Usage' in o for o in outputs), outputs; "
             "print(sorted(m for m in ('torch', 'pandas', 'scipy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_list_and_config_errors_import_no_torch(tmp_path):
    """Issue 15.2: `mmbench list` took 8 s and a typo 6 s, importing torch, torchvision, torchaudio, PyAV and
    scipy through the plugin modules; they now read the plugins' catalogue (tests/test_registry.py)."""
    import json
    import os
    import subprocess
    import sys

    commands = [["list"], ["list", "methods", "--json"], ["run", "-m", "jiont"], ["run", "-d", "synthtic"],
                ["run", "-m", "joint", "--set", "epochs=0"], ["run", "-m", "joint", "--set", "lr=-1"],
                ["run", "-m", "joint", "--set", "foo=1"], ["run", "-m", "opm", "--set", "q_base=x"]]
    probe = ("import sys, json; from typer.testing import CliRunner; from mmbench.cli import app; "
             f"codes = [CliRunner().invoke(app, args).exit_code for args in {commands!r}]; "
             "print(json.dumps([codes, [m for m in ('torch', 'torchvision', 'av', 'scipy') if m in sys.modules]]))")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # a fresh install: no catalogue yet
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert "torch" in json.loads(first.stdout)[1]  # the first command imports the plugins, to write it
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    codes, loaded = json.loads(again.stdout)
    assert codes == [0, 0, 2, 2, 2, 2, 2, 2] and loaded == []


def test_unreadable_result_files_are_skipped_and_listed_and_a_corrupt_run_is_retrained(tmp_path):
    """Issue 15.16/15.17: one zero-byte, truncated or foreign parquet made `report` and `read_runs` crash and
    every later `run` exit 1; a truncated run row counted as done forever."""
    import pandas as pd

    out = tmp_path / "results"
    assert invoke("run", "-m", "joint", "--seeds", "0", "--out", str(out), *TINY_SETS).exit_code == 0
    folder = out / "runs" / "dataset=synthetic" / "method=joint"
    row_file = next(folder.glob("*.parquet"))
    (folder / "0000000000000000.parquet").write_bytes(b"")
    (folder / "1111111111111111.parquet").write_bytes(row_file.read_bytes()[:200])
    pd.DataFrame({"a": [1, 2]}).to_parquet(folder / "2222222222222222.parquet")
    (out / "epochs" / "dataset=synthetic" / "method=joint" / "3333333333333333.parquet").write_bytes(b"PAR1")

    runs = read_runs(out)
    assert len(runs) == 1 and len(runs.attrs["unreadable"]) == 3
    assert all("delete it and run the same `mmbench run` again" in line for line in runs.attrs["unreadable"])
    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report"), "--format", "md"])
    assert report.exit_code == 0, report.output
    assert report.output.count("skipped ") == 4 and "Traceback" not in report.output
    again = invoke("run", "-m", "joint", "--seeds", "0", "--out", str(out), *TINY_SETS)
    assert again.exit_code == 0 and "already done" in again.output and "skipped " in again.output

    finished = row_file.stat().st_mtime_ns
    row_file.write_bytes(row_file.read_bytes()[:300])  # a corrupt run row is not a finished run
    repaired = invoke("run", "-m", "joint", "--seeds", "0", "--out", str(out), *TINY_SETS)
    assert repaired.exit_code == 0 and "already done" not in repaired.output
    assert row_file.stat().st_mtime_ns != finished and len(pd.read_parquet(row_file)) == 1


def test_a_stored_run_replays_from_its_config_yaml_its_row_or_its_run_id(tmp_path):
    """Issue 15.4: a run's stored config, written back as YAML, was rejected (`unknown key 'seed' ... did you
    mean data_seed?`). Each run now keeps configs/.../<run_id>.yaml, which --config takes as it is."""
    import pandas as pd

    first, second = tmp_path / "a", tmp_path / "b"
    assert invoke("run", "-m", "opm", "--seeds", "1", "--out", str(first), *TINY_SETS).exit_code == 0
    row = next(first.glob("runs/dataset=*/method=opm/*.parquet"))
    run_id = row.stem
    config = first / "configs" / row.relative_to(first / "runs").with_suffix(".yaml")
    assert "seed: 1" in config.read_text() and "hparams:" in config.read_text()

    replay = invoke("run", "--config", str(config), "--out", str(second))
    assert replay.exit_code == 0, replay.output
    again = second / row.relative_to(first)
    assert again.is_file()  # the same run_id
    preds = row.relative_to(first / "runs")
    assert pd.read_parquet(first / "preds" / preds).equals(pd.read_parquet(second / "preds" / preds))
    assert "already done" in invoke("run", "--from", run_id, "--out", str(first)).output
    assert "already done" in invoke("run", "--from", str(row), "--out", str(second)).output

    shown = invoke("run", "--from", str(row), "--set", "lr=0.05", "--print-config", "--out", str(tmp_path / "c"))
    assert "lr: 0.05  # --set" in shown.output and f"epochs: 2  # --from {row}" in shown.output
    assert not (tmp_path / "c").exists()  # --print-config runs nothing
    fresh = invoke("run", "-m", "ogm-ge", "--set", "alpha=0.3", "--print-config")
    assert "alpha: 0.3  # --set" in fresh.output and "modulate: conv  # ogm-ge default" in fresh.output
    assert "lr: 0.02  # synthetic protocol" in fresh.output
    missing = invoke("run", "--from", "0123456789abcdef", "--out", str(first))
    assert missing.exit_code == 2 and "no run 0123456789abcdef under" in missing.output


@pytest.mark.parametrize("command", [
    ["run", "-m", "joint", "--seeds", "0", *TINY_SETS, "--out"],
    ["sweep", "SWEEP", "--out"],
    ["report", "RESULTS", "--format", "md", "--out"],
    ["fixtures", "cremad", "--layout", "raw", "--out"],
])
def test_an_output_that_cannot_be_written_fails_before_any_work_in_one_line(tmp_path, command):
    """Issue 15.19: a read-only or regular-file --out gave tracebacks, `report` after all its work."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("methods: [joint]\ndatasets: [synthetic]\nseeds: [0]\nset: {epochs: 1, n_train: 240}\n")
    results = tmp_path / "results"
    assert invoke("run", "-m", "joint", "--seeds", "0", "--out", str(results), *TINY_SETS).exit_code == 0
    args = [str(sweep) if a == "SWEEP" else str(results) if a == "RESULTS" else a for a in command]
    target = blocker / "sub" if command[0] == "fixtures" else blocker
    result = runner.invoke(app, [*args, str(target)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and ("is a file, not a folder" in result.output or
                                                 "cannot write there" in result.output), result.output


def test_a_failure_record_that_cannot_be_written_does_not_hide_the_failure(tmp_path, monkeypatch):
    from mmbench.config import resolve
    from mmbench.train import engine

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    cfg = resolve("joint", "synthetic", 0, overrides={**TINY, "lr": 1e30})  # diverges: a run failure
    monkeypatch.setattr(engine, "write_json", no_space)
    with pytest.raises(engine.RunFailed, match="non-finite loss"):
        engine.run(cfg, tmp_path)


def test_a_run_locked_by_another_process_is_waited_for_and_reported_as_done_there():
    """Issue 15.23: the second of two concurrent `run`s exited 0 having produced nothing."""
    from mmbench.scheduler.inline import execute_or_wait

    def scripted(*outcomes):
        queue = list(outcomes)
        return lambda cfg, out, reporter, announce_lock=True: queue.pop(0)

    cfg = tiny_config()
    assert execute_or_wait(cfg, "out", None, scripted("locked", "locked", "done"), poll_s=0) == "done elsewhere"
    assert execute_or_wait(cfg, "out", None, scripted("locked", "trained"), poll_s=0) == "trained"  # it failed there
    assert execute_or_wait(cfg, "out", None, scripted("done"), poll_s=0) == "done"


def test_sigterm_stops_a_run_like_ctrl_c_and_the_run_resumes(tmp_path):
    """Issue 15.23: SLURM and `kill` send SIGTERM, which had no handler."""
    import signal
    import subprocess
    import sys
    import time

    from mmbench.results import run_paths

    cfg = tiny_config(epochs=40)
    args = [sys.executable, "-c", "from mmbench.cli import main; main()", "run", "-m", "joint", "--seeds", "0",
            "--out", str(tmp_path), *[a for key, v in TINY.items() if key != "epochs"
                                      for a in ("--set", f"{key}={v}")], "--epochs", "40"]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    epochs = run_paths(tmp_path, cfg).epochs
    deadline = time.time() + 120
    while not epochs.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "interrupted: joint seed 0 resumes from its last finished epoch" in stderr
    assert not run_paths(tmp_path, cfg).row.exists()

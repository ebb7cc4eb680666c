from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.results import read_runs

from .conftest import TINY

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
    from mmbench.cli import _describe_knobs
    from mmbench.registry import METHODS

    cells = {name: _describe_knobs(cls, cls.hparams) for name, cls in METHODS.items()}
    assert "estimator=corrected (official|corrected)" in cells["arm"]
    assert "--profile official also sets: estimator=official" in cells["arm"]
    assert "theta_grad=none (none|official)" in cells["opm"] and "sets: theta_grad=official" in cells["opm"]
    assert "sets: ge=True" in cells["ogm"]
    assert "audio_frontend=aug-stft (cremad), aug-ks-stft (kinetics-sounds); lr_step_at=epoch_start" in cells["aug"]
    assert "arm" in invoke("list", "methods").output


def test_list_rejects_an_unknown_kind():
    result = invoke("list", "model")
    assert result.exit_code == 2 and "choose methods, datasets or all" in result.output


def test_run_writes_each_seed_once_and_recomputes_only_what_is_missing(tmp_path):
    out = str(tmp_path / "results")
    first = invoke("run", "--method", "joint", "--dataset", "synthetic", "--seeds", "0,1,2",
                   "--out", out, *TINY_SETS)
    assert first.exit_code == 0, first.output
    rows = read_runs(out)
    assert sorted(rows["seed"]) == [0, 1, 2]
    assert "joint" in first.output and "± " in first.output  # the summary table

    again = invoke("run", "--method", "joint", "--seeds", "0,1,2", "--out", out, *TINY_SETS)
    assert again.output.count("already done") == 3
    assert read_runs(out)["finished_at"].tolist() == rows["finished_at"].tolist()

    row_file = next((tmp_path / "results").glob("dataset=synthetic/method=joint/*[0-9a-f].parquet"))
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
    assert not (tmp_path / "dataset=synthetic").exists()


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
])
def test_bad_options_are_reported_in_one_line(tmp_path, args, message):
    result = invoke("run", "-m", "joint", "--out", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in result.output

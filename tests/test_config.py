from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

import mmbench
from mmbench.config import ConfigError, RunConfig, load_yaml, parse_seeds, parse_sets, resolve
from mmbench.registry import DATASETS, METHODS

from .conftest import tiny_config


def test_layers_apply_in_order(tmp_path):
    synthetic = DATASETS.get("synthetic")
    cfg = resolve("joint", "synthetic")
    assert cfg.epochs == synthetic.defaults["epochs"]  # dataset default beats the global default
    assert cfg.momentum == RunConfig.momentum  # untouched keys keep the global default
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 5\nlr: 0.5\ndata:\n  n_train: 300\n")
    overrides = load_yaml(yaml_file)
    overrides.update(parse_sets(["lr=0.25"]))
    cfg = resolve("joint", "synthetic", overrides=overrides)
    assert (cfg.epochs, cfg.lr, cfg.data["n_train"]) == (5, 0.25, 300)  # --set beats YAML


def test_profile_sits_between_dataset_defaults_and_overrides(monkeypatch):
    joint = METHODS.get("joint")
    monkeypatch.setattr(joint, "profiles", {"official": {"synthetic": {"epochs": 7, "lr": 0.5}}})
    cfg = resolve("joint", "synthetic", profile="official")
    assert (cfg.epochs, cfg.lr, cfg.profile) == (7, 0.5, "official")
    assert resolve("joint", "synthetic", profile="official", overrides={"epochs": 3}).epochs == 3


def test_official_profile_missing_for_dataset_is_refused():
    with pytest.raises(ConfigError, match="use --profile benchmark"):
        resolve("joint", "synthetic", profile="official")


def test_method_hyperparameters_and_dataset_params_route_by_name():
    cfg = resolve("unimodal", "synthetic", overrides={"modality": "visual", "data.n_test": 50})
    assert cfg.hparams == {"modality": "visual"}
    assert cfg.data["n_test"] == 50


@pytest.mark.parametrize("overrides, message", [
    ({"lrr": "0.1"}, r"unknown key 'lrr'.*did you mean lr\?.*valid keys: .*weight_decay"),
    ({"epochs": "ten"}, r"epochs='ten' is not a valid int"),
    ({"epochs": "2.5"}, r"epochs='2.5' is not a valid int"),
    ({"lr": "fast"}, r"lr='fast' is not a valid float"),
    ({"deterministic": "maybe"}, r"deterministic='maybe' is not a valid bool"),
    ({"fusion": "late"}, r"fusion='late' is not allowed; choices: concat, sum, film, gated"),
    ({"modality": "text"}, r"modality='text' is not allowed; choices: audio, visual"),
    ({"foo.lr": "1"}, r"unknown key 'foo.lr'"),
    ({"device": "gpu"}, r"device='gpu' is not allowed; choices: auto, cpu, cuda, cuda:N"),
])
def test_invalid_settings_fail_with_one_line_naming_the_key(overrides, message):
    method = "unimodal" if "modality" in overrides else "joint"
    with pytest.raises(ConfigError, match=message) as info:
        resolve(method, "synthetic", overrides=overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "0", r"epochs=0 is out of range: it must be >= 1"),
    ("epochs", "-1", r"epochs=-1 is out of range"),
    ("lr", "-1", r"lr=-1.0 is out of range: it must be > 0"),
    ("lr", "0", r"lr=0.0 is out of range: it must be > 0"),
    ("lr", "nan", r"lr=nan is out of range"),
    ("lr", "inf", r"lr=inf is out of range"),
    ("batch_size", "0", r"batch_size=0 is out of range"),
    ("lr_step", "0", r"lr_step=0 is out of range"),
    ("lr_gamma", "1.5", r"lr_gamma=1.5 is out of range: it must be > 0 and <= 1"),
    ("momentum", "-0.1", r"momentum=-0.1 is out of range"),
    ("val_fraction", "0", r"val_fraction=0.0 is out of range: it must be > 0 and <= 0.9"),
    ("encoder_width", "0", r"encoder_width=0 is out of range"),
    ("num_threads", "-1", r"num_threads=-1 is out of range"),
    ("n_train", "0", r"n_train=0 is out of range: it must be >= 10"),
    ("audio_confusion", "1.5", r"audio_confusion=1.5 is out of range: it must be >= 0 and <= 1"),
])
def test_out_of_range_values_fail_before_anything_runs(key, value, message):
    """Issue 15.3/15.20: `--epochs 0` and `--set lr=-1` used to write rows for untrained models or fail
    three times at run time."""
    with pytest.raises(ConfigError, match=message) as info:
        resolve("joint", "synthetic", overrides={key: value})
    assert "\n" not in str(info.value)
    resolve("joint", "synthetic", overrides={"epochs": "1", "lr": "1e-6", "lr_gamma": "1", "momentum": "0"})


def test_string_values_are_coerced_to_the_default_type():
    cfg = resolve("joint", "synthetic", overrides={"epochs": "3", "lr": "1e-2", "bf16": "true"})
    assert (cfg.epochs, cfg.lr, cfg.bf16) == (3, 0.01, True)
    assert isinstance(cfg.lr, float) and isinstance(cfg.epochs, int)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(tmp_path / "absent.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listing)


@pytest.mark.parametrize("text, seeds", [("0,1,2", [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), ("7", [7]),
                                         ([3, 1], [3, 1]), (5, [5])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a,b", "1,1", "", "-1", [1.5], "0-2.5"])
def test_parse_seeds_rejects_bad_lists(text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_parse_sets_needs_key_value():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_sets(["lr0.1"])


def test_run_id_is_the_hash_of_config_schema_and_code_version():
    cfg = tiny_config()
    payload = {"config": cfg.identity(), "schema": mmbench.RESULT_SCHEMA_VERSION,
               "code": f"engine{mmbench.ENGINE_VERSION}/joint@1/synthetic@1"}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    assert cfg.run_id == expected.hexdigest()[:16]


def test_run_id_changes_with_what_changes_the_numbers_only():
    base = tiny_config()
    assert tiny_config().run_id == base.run_id
    assert tiny_config(seed=1).run_id != base.run_id
    assert tiny_config(lr=0.5).run_id != base.run_id
    assert tiny_config(n_train=300).run_id != base.run_id
    assert tiny_config(lr="0.02").run_id == tiny_config(lr=0.02).run_id
    # Where and on how many threads a run executes is provenance, not identity.
    assert tiny_config(device="cpu", num_threads=2).run_id == base.run_id


def test_run_id_is_stable_across_processes():
    code = ("from tests.conftest import tiny_config; print(tiny_config().run_id)")
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONHASHSEED": str(s), "PATH": ""}).stdout.strip() for s in (1, 2)}
    assert ids == {tiny_config().run_id}


def test_invalid_combination_is_refused_by_the_method(monkeypatch):
    joint = METHODS.get("joint")
    monkeypatch.setattr(joint, "fusions", ("concat", "sum"))
    with pytest.raises(ConfigError, match="defined for fusion concat or sum, not fusion=film"):
        resolve("joint", "synthetic", overrides={"fusion": "film"})


def test_with_several_methods_a_hyperparameter_goes_to_the_methods_that_have_it():
    from mmbench.config import expand

    joint, uni = expand(["joint", "unimodal"], "synthetic", [0], "benchmark", {"modality": "visual"})
    assert joint.hparams == {} and uni.hparams == {"modality": "visual"}
    joint, uni = expand(["joint", "unimodal"], "synthetic", [0], "benchmark", {"unimodal.modality": "visual"})
    assert uni.hparams == {"modality": "visual"}
    with pytest.raises(ConfigError, match="unknown key 'alpha'"):
        expand(["joint", "unimodal"], "synthetic", [0], "benchmark", {"alpha": "1"})


def test_a_method_prefix_scopes_any_setting_to_that_method():
    """Issue 14 item 10: `mmbench check --set joint.lr=...` was rejected (lr is a core key)."""
    from mmbench.analysis import check

    configs = check.suite_configs("ci", [0], ["joint", "opm"], {"joint.lr": "0.5", "opm.epochs": "2"})
    joint, opm = configs["joint"][0], configs["opm"][0]
    assert (joint.lr, opm.lr) == (0.5, check.suite_configs("ci", [0], ["opm"])["opm"][0].lr)
    assert (joint.epochs, opm.epochs) == (check.SUITES["ci"]["settings"]["epochs"], 2)


def test_the_ci_suite_trains_arm_longer_unless_the_user_sets_the_key_for_every_method():
    """Issue 14: arm's seeds spread by 3.8 pp after the suite's 10 epochs, so the suite gives it 20;
    `mmbench check --set epochs=3` must still mean 3 epochs for every method, arm included."""
    from mmbench.analysis import check

    suite = check.suite_configs("ci", [0], ["arm", "joint"])
    assert (suite["arm"][0].epochs, suite["arm"][0].lr_step) == (20, 14)
    assert (suite["joint"][0].epochs, suite["joint"][0].lr_step) == (10, 7)
    overridden = check.suite_configs("ci", [0], ["arm", "joint"], {"epochs": "3"})
    assert overridden["arm"][0].epochs == overridden["joint"][0].epochs == 3
    assert check.suite_configs("ci", [0], ["arm"], {"arm.epochs": "5"})["arm"][0].epochs == 5

"""Cross-run dependencies (issue 17, G5): a method requires finished runs, `run`/`sweep` train them first,
reuse finished ones, keep their weights, and fail a run whose required run failed, in one line."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmbench.cli import app
from mmbench.config import ConfigError
from mmbench.method import Method
from mmbench.registry import METHODS
from mmbench.results import is_done, read_runs, run_paths
from mmbench.scheduler import SweepSummary
from mmbench.scheduler.waves import run_waves
from mmbench.train import engine
from mmbench.train.dependencies import in_waves, required_by, required_configs

from .conftest import TINY, tiny_config

runner = CliRunner()
TINY_SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def test_a_required_run_is_the_runs_config_with_method_and_hyperparameters_replaced():
    cfg = tiny_config("umt", seed=4, epochs=3, lr=0.05, scaling=2.0)
    required = required_configs(cfg)
    assert set(required) == {"teacher_a", "teacher_v"}
    assert required["teacher_a"] == dataclasses.replace(cfg, method="unimodal", hparams={"modality": "audio"},
                                                        keep_weights=True)
    # the very run a user asks for with the same settings: a finished one is reused, not retrained
    asked = tiny_config("unimodal", seed=4, epochs=3, lr=0.05, modality="visual")
    assert required["teacher_v"].run_id == asked.run_id != required["teacher_a"].run_id
    assert required_configs(tiny_config("joint")) == {}


def test_waves_put_required_runs_first_each_once_and_keep_weights_of_one_also_asked_for():
    asked_teacher = tiny_config("unimodal", modality="audio")
    configs = [tiny_config("umt"), tiny_config("ume"), asked_teacher, tiny_config("joint"), tiny_config("umt", seed=1)]
    waves = in_waves(configs)
    assert [[(c.method, c.seed, c.hparams.get("modality")) for c in wave] for wave in waves] == [
        [("unimodal", 0, "audio"), ("unimodal", 0, "visual"), ("joint", 0, None), ("unimodal", 1, "audio"),
         ("unimodal", 1, "visual")],
        [("umt", 0, None), ("ume", 0, None), ("umt", 1, None)],
    ]
    assert not asked_teacher.keep_weights and waves[0][0].run_id == asked_teacher.run_id
    assert all(c.keep_weights for c in waves[0] if c.method == "unimodal")
    assert required_by(configs)[asked_teacher.run_id] == "teacher_a of umt"


class _Needy(Method):
    name = "needy"
    requires = {"other": {"method": "unimodal", "modality": "audio", "momentum": 0.5}}


def test_bad_requirements_are_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(METHODS._items, "needy", _Needy)
    assert required_configs(tiny_config("needy"))["other"].momentum == 0.5  # core settings may differ
    monkeypatch.setattr(_Needy, "requires", {"other": {"method": "unimodal", "modalty": "audio"}})
    with pytest.raises(ConfigError, match=r"^method needy requires run 'other' with modalty='audio', which is "
                                          r"neither a hyperparameter of unimodal nor a core setting"):
        required_configs(tiny_config("needy"))
    monkeypatch.setattr(_Needy, "requires", {"other": {"method": "needy", "seed": 3}})
    with pytest.raises(ConfigError, match="with seed=3"):  # a required run has the requiring run's seed
        required_configs(tiny_config("needy"))
    monkeypatch.setattr(_Needy, "requires", {"self": {"method": "needy"}})
    with pytest.raises(ConfigError, match="requires itself"):
        in_waves([tiny_config("needy")])


def test_a_run_without_its_required_runs_fails_in_one_line_naming_them(tmp_path):
    cfg = tiny_config("umt")
    teacher = required_configs(cfg)["teacher_a"]
    with pytest.raises(engine.RunFailed, match=rf"umt seed 0 needs the weights of the unimodal run {teacher.run_id} "
                                               r"\(teacher_a\), not found at .*\.pt: run it through `mmbench run`"):
        engine.run(cfg, tmp_path)


def test_run_trains_the_required_runs_first_reuses_them_and_loads_their_selected_weights(tmp_path):
    out = tmp_path / "r"
    args = ("run", "-m", "umt,ume", "--seeds", "0", "--out", str(out), *TINY_SETS)
    first = runner.invoke(app, list(args), catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "unimodal seed 0 (teacher_a of umt): test acc" in first.output
    assert "unimodal seed 0 (teacher_v of umt): test acc" in first.output
    rows = read_runs(out).set_index("method")
    assert sorted(rows.index) == ["ume", "umt", "unimodal", "unimodal"]
    teachers = {c.hparams["modality"]: c for c in required_configs(tiny_config("umt")).values()}
    teacher_rows = read_runs(out).set_index("run_id").loc[[teachers["audio"].run_id, teachers["visual"].run_id]]
    # ume predicts with the teachers as they selected them: each head is its unimodal run's best-val model
    assert rows.loc["ume", "best_val_acc_head_a"] == teacher_rows["best_val_acc"].iloc[0]
    assert rows.loc["ume", "best_val_acc_head_v"] == teacher_rows["best_val_acc"].iloc[1]
    assert rows.loc["ume", "final_acc"] == rows.loc["ume", "best_val_acc"]  # it trains nothing
    assert rows.loc["umt", "cost_fwd_a"] == 2.0 and rows.loc["umt", "cost_bwd_a"] == 1.0  # the teachers' passes
    # what the teachers' own training cost, for a report that counts a method's cost from scratch
    teachers_cost = teacher_rows["train_gflops_per_sample"].sum()
    assert rows.loc["umt", "required_gflops_per_sample"] == pytest.approx(teachers_cost)
    assert rows.loc["ume", "required_gflops_per_sample"] == pytest.approx(teachers_cost)
    assert pd.isna(rows.loc["ume", "train_gflops_per_sample"]) and rows.loc["umt", "train_gflops_per_sample"] > 0

    again = runner.invoke(app, list(args), catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("already done") == 4, again.output

    # a finished teacher without its weights (e.g. run alone before) is trained again to keep them
    paths = run_paths(out, teachers["audio"])
    preds = pd.read_parquet(paths.preds)
    paths.weights.unlink()
    assert not is_done(paths) and is_done(run_paths(out, dataclasses.replace(teachers["audio"], keep_weights=False)))
    third = runner.invoke(app, list(args), catch_exceptions=False)
    assert third.exit_code == 0 and "unimodal seed 0 (teacher_a of umt): test acc" in third.output, third.output
    assert paths.weights.is_file() and pd.read_parquet(paths.preds).equals(preds)


BROKEN = textwrap.dedent('''
    from mmbench.method import Method
    from mmbench.registry import register_method

    @register_method
    class BrokenTeacher(Method):
        name = "broken-teacher"

        def build(self, model, ctx):
            raise RuntimeError("no teacher today")

    @register_method
    class Pupil(Method):
        name = "pupil"
        requires = {"teacher": {"method": "broken-teacher"}}
''')


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_run_whose_required_run_failed_fails_in_one_line_without_starting(tmp_path, command, monkeypatch):
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the plugin's methods leave with the test
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    out = tmp_path / "r"
    if command == "run":
        args = ["run", "-m", "pupil,joint", "--seeds", "0"]
    else:
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(json.dumps({"methods": ["pupil", "joint"], "datasets": ["synthetic"], "seeds": [0],
                                     "set": TINY}))
        args = ["sweep", str(sweep), "--jobs", "2"]
    result = runner.invoke(app, [*args, "--out", str(out), "--plugin", str(plugin), *TINY_SETS])
    assert result.exit_code == 1, result.output
    teacher = required_configs(tiny_config("pupil"))
    text = " ".join(result.output.split())
    assert f"the run it requires as teacher (broken-teacher seed 0, {teacher['teacher'].run_id}) did not finish " \
           "with its weights: it failed (see" in text
    assert read_runs(out)["method"].tolist() == ["joint"]  # the others still ran
    failed = {p.parent.name: json.loads(p.read_text()) for p in out.glob("failed/*/*/*.json")}
    assert failed["method=pupil"]["error"].startswith("not started: the run it requires as teacher")
    assert "no teacher today" in failed["method=broken-teacher"]["error"]


class _Backend:
    """Records the runs it is handed; ends like SLURM --no-wait with them queued, or with them all done."""

    def __init__(self, queued: bool) -> None:
        self.calls: list[list[str]] = []
        self.queued = queued

    def run(self, configs, on_tick=None):
        self.calls.append([c.method for c in configs])
        return SweepSummary(total=len(configs), skipped=0 if self.queued else len(configs), detached=True)


def test_waves_stop_after_one_left_queued_and_never_hand_over_a_run_whose_required_runs_did_not_finish(tmp_path):
    waves = in_waves([tiny_config("umt")])
    queued = _Backend(queued=True)
    summary, waiting = run_waves(queued, waves, tmp_path)
    assert queued.calls == [["unimodal", "unimodal"]] and summary.detached and waiting == 1
    # a wave that ended (here: its runs reported done, but without results on disk) lets the next one start,
    # whose run is then recorded as failed rather than handed to the backend
    ended = _Backend(queued=False)
    summary, waiting = run_waves(ended, waves, tmp_path)
    assert ended.calls == [["unimodal", "unimodal"], []] and waiting == 0 and not summary.detached
    assert [c.method for c, *_ in summary.failed] == ["umt"]
    assert "not started: the run it requires as teacher_a" in summary.failed[0][1]

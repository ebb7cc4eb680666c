from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from mmbench import results
from mmbench.data import carve_validation
from mmbench.method import Method
from mmbench.registry import DATASETS, METHODS
from mmbench.results import read_epochs, read_preds, read_runs, run_paths
from mmbench.train import engine

from .conftest import tiny_config


def _preds(out, cfg) -> pd.DataFrame:
    return read_preds(run_paths(out, cfg))


def test_same_seed_twice_gives_identical_predictions(tmp_path):
    cfg = tiny_config()
    row_a = engine.run(cfg, tmp_path / "a")
    row_b = engine.run(cfg, tmp_path / "b")
    pa, pb = _preds(tmp_path / "a", cfg), _preds(tmp_path / "b", cfg)
    assert np.array_equal(np.stack(pa["probs"]), np.stack(pb["probs"]))
    assert row_a["final_n_correct"] == row_b["final_n_correct"]
    assert row_a["num_threads"] == 1


def test_different_seeds_give_different_models(tmp_path):
    engine.run(tiny_config(seed=0), tmp_path)
    engine.run(tiny_config(seed=1), tmp_path)
    p0, p1 = _preds(tmp_path, tiny_config(seed=0)), _preds(tmp_path, tiny_config(seed=1))
    assert not np.array_equal(np.stack(p0["probs"]), np.stack(p1["probs"]))


def test_seed_gives_every_method_the_same_init_and_batch_order(monkeypatch, tmp_path):
    """Common random numbers: the paired analysis of STATS.md 2.1 relies on this."""
    seen: dict[str, dict] = {}
    original_step = Method.train_step

    def spy(self, model, batch, optimizer, ctx):
        record = seen.setdefault(self.name, {"batches": []})
        if not record["batches"]:
            encoder = model.audio_encoder if hasattr(model, "audio_encoder") else model.encoder
            record["init"] = [p.detach().clone() for p in encoder.parameters()]
        record["batches"].append(batch.index.clone())
        return original_step(self, model, batch, optimizer, ctx)

    monkeypatch.setattr(Method, "train_step", spy)
    engine.run(tiny_config("joint", epochs=1), tmp_path)
    engine.run(tiny_config("unimodal", epochs=1, modality="audio"), tmp_path)
    joint, uni = seen["joint"], seen["unimodal"]
    assert all(torch.equal(a, b) for a, b in zip(joint["init"], uni["init"], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(joint["batches"], uni["batches"], strict=True))


class StopAfter(engine.Reporter):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_finished(self, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("settings", [{}, {"method": "aug", "lr_step_at": "epoch_start", "lr_step": 2}])
def test_resume_after_interruption_gives_the_identical_result(tmp_path, settings):
    settings = dict(settings)
    cfg = tiny_config(settings.pop("method", "joint"), epochs=4, **settings)
    reference = engine.run(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        engine.run(cfg, tmp_path / "cut", StopAfter(epoch=1))
    paths = run_paths(tmp_path / "cut", cfg)
    assert not paths.row.exists() and (paths.checkpoint_dir / "last.pt").exists()

    started = []

    class Spy(engine.Reporter):
        def run_started(self, cfg, epochs, steps, start_epoch):
            started.append(start_epoch)

    resumed = engine.run(cfg, tmp_path / "cut", Spy())
    assert started == [2]
    assert not paths.checkpoint_dir.exists()
    for key in ("final_n_correct", "best_val_n_correct", "best_val_epoch", "final_loss"):
        assert resumed[key] == reference[key]
    ref_preds, cut_preds = _preds(tmp_path / "ref", cfg), _preds(tmp_path / "cut", cfg)
    assert np.array_equal(np.stack(ref_preds["probs"]), np.stack(cut_preds["probs"]))
    ref_epochs = pq.read_table(run_paths(tmp_path / "ref", cfg).epochs).to_pandas()
    cut_epochs = pq.read_table(paths.epochs).to_pandas()
    assert ref_epochs["train_loss"].tolist() == cut_epochs["train_loss"].tolist()
    assert ref_epochs["lr"].tolist() == cut_epochs["lr"].tolist()


@pytest.mark.slow
class EpochClock:
    """A clock that the reporter advances by 10 s after each epoch's checkpoint decision."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sparse_checkpoints_resume_to_the_identical_result_and_write_best_before_last(tmp_path, monkeypatch):
    """Issue 16.2: `last.pt` only once checkpoint_every_s passed (here every 3rd epoch), the best state kept
    on the device in between and written just before `last.pt`; a run interrupted between two checkpoints
    recomputes the epochs since the last one and ends identical to an uninterrupted run."""
    clock = EpochClock()
    writes = []
    real_save = engine.Checkpoint.save

    def recording_save(self, path, state):
        writes.append((path.name, len(state["progress"]["epoch_rows"]) if "progress" in state else None))
        real_save(self, path, state)

    monkeypatch.setattr(engine.Checkpoint, "save", recording_save)
    real_init = engine.Checkpoint.__init__
    monkeypatch.setattr(engine.Checkpoint, "__init__",
                        lambda self, paths, every_s=0.0: real_init(self, paths, every_s, clock=clock))

    class Tick(engine.Reporter):
        def __init__(self, stop: int | None = None) -> None:
            self.stop = stop

        def epoch_finished(self, row):
            clock.now += 10.0
            if row["epoch"] == self.stop:
                raise KeyboardInterrupt

    cfg = tiny_config("joint", epochs=7, checkpoint_every_s=15)
    reference = engine.run(cfg, tmp_path / "ref", Tick())
    # epochs 0-6: due after epochs 2 and 4 (>= 15 s of the clock since the last write) and after the last
    assert [w for w in writes if w[0] == "last.pt"] == [("last.pt", 3), ("last.pt", 5), ("last.pt", 7)]
    assert all(writes[i + 1][0] == "last.pt" for i, w in enumerate(writes) if w[0] == "best.pt")
    writes.clear()
    clock.now = 0.0
    with pytest.raises(KeyboardInterrupt):
        engine.run(cfg, tmp_path / "cut", Tick(stop=3))  # after the checkpoint of epoch 2, before that of 4
    paths = run_paths(tmp_path / "cut", cfg)
    assert engine.Checkpoint(paths).load(paths.checkpoint_dir / "last.pt")["progress"]["epoch_rows"][-1]["epoch"] == 2
    resumed = engine.run(cfg, tmp_path / "cut", Tick())
    for key in ("final_n_correct", "best_val_n_correct", "best_val_epoch", "final_loss", "best_val_loss"):
        assert resumed[key] == reference[key], key
    assert np.array_equal(np.stack(_preds(tmp_path / "ref", cfg)["probs"]),
                          np.stack(_preds(tmp_path / "cut", cfg)["probs"]))


def test_the_best_state_is_a_copy_that_later_steps_do_not_change():
    cfg = tiny_config("joint")
    from .conftest import training_setup

    _, _, ctx, model, _ = training_setup(cfg)
    checkpoint = engine.Checkpoint(run_paths("unused", cfg))
    checkpoint.keep_best(model, ctx.method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    kept = checkpoint.best_state()["model"]
    assert all(torch.equal(kept[k], before[k]) for k in before)
    checkpoint.keep_best(model, ctx.method)  # the second time in place
    assert all(torch.equal(checkpoint.best_state()["model"][k], v) for k, v in model.state_dict().items())


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(epochs=6, n_train=600)
    reference = engine.run(cfg, tmp_path / "ref")
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "mmbench.cli", "run", "-m", "joint", "--seeds", "0", "--out", str(out)]
    for key, value in {"n_train": 600, "n_test": 120, "audio_size": 12, "image_size": 12, "epochs": 6,
                       "batch_size": 32, "encoder_width": 8, "num_threads": 1}.items():
        args += ["--set", f"{key}={value}"]
    checkpoint = run_paths(out, cfg).checkpoint_dir / "last.pt"
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    paths = run_paths(out, cfg)
    assert not paths.row.exists(), "the run must not have finished before the kill"
    visible = sorted(p for p in out.glob("*/*/*/*") if not p.name.startswith("."))
    # a killed run leaves its config and the epochs it finished (issue 15.4/15.5), never a run row or preds
    assert visible in ([paths.config], sorted([paths.config, paths.epochs])), visible
    resumed = engine.run(cfg, out)
    assert resumed["final_n_correct"] == reference["final_n_correct"]
    assert np.array_equal(np.stack(_preds(out, cfg)["probs"]),
                          np.stack(_preds(tmp_path / "ref", cfg)["probs"]))


def test_a_write_killed_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    cfg = tiny_config(epochs=1)
    real_write = pq.write_table

    def dying_write(table, where, *args, **kwargs):
        if str(where).startswith(str(tmp_path / "preds")):
            with open(where, "wb") as handle:
                handle.write(b"PAR1 half a file")
            raise OSError("disk full")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", dying_write)
    with pytest.raises(engine.RunFailed, match="disk full"):
        engine.run(cfg, tmp_path)
    paths = run_paths(tmp_path, cfg)
    leftovers = sorted(tmp_path.glob("*/*/*/*"))
    assert leftovers == sorted([paths.config, paths.epochs, paths.failed])  # no row, preds, temporary
    assert read_runs(tmp_path).empty
    monkeypatch.undo()
    engine.run(cfg, tmp_path)  # the same run now completes and clears the failure record
    assert paths.row.exists() and not paths.failed.exists()


class DivergesAtEpoch1Step2(Method):
    name = "diverges"

    def loss(self, out, batch, ctx):
        loss = super().loss(out, batch, ctx)
        return loss * float("inf") if (ctx.epoch, ctx.step) == (1, 2) else loss


def test_non_finite_loss_stops_with_epoch_and_step_and_records_a_failure(tmp_path):
    METHODS.register(DivergesAtEpoch1Step2)
    cfg = tiny_config("diverges")
    # ctx counts from 0; messages count from 1 (issue 15.6: one numbering wherever a user reads epochs)
    with pytest.raises(engine.NonFiniteLoss, match=r"non-finite loss \(inf\) at epoch 2 step 3"):
        engine.run(cfg, tmp_path)
    record = json.loads(run_paths(tmp_path, cfg).failed.read_text())
    assert "non-finite loss" in record["error"] and record["run_id"] == cfg.run_id
    assert not run_paths(tmp_path, cfg).row.exists()
    # issue 15.5: the epoch table is written as training goes, so the epoch before the failure is there
    assert pd.read_parquet(run_paths(tmp_path, cfg).epochs)["epoch"].tolist() == [0]


def test_result_files_follow_the_schema(tmp_path):
    cfg = tiny_config()
    engine.run(cfg, tmp_path)
    paths = run_paths(tmp_path, cfg)
    assert paths.row == tmp_path / "runs" / "dataset=synthetic" / "method=joint" / f"{cfg.run_id}.parquet"
    assert pq.read_schema(paths.row).equals(results.RUN_SCHEMA, check_metadata=False)
    assert pq.read_schema(paths.epochs).equals(results.EPOCH_SCHEMA, check_metadata=False)
    row = results.read_row(paths)
    for column in ("run_id", "dataset", "method", "seed", "pair_key", "profile", "n_test",
                   "final_acc", "final_acc_head_a", "final_acc_head_v", "final_macro_f1", "final_map",
                   "final_rho", "best_val_acc", "best_val_epoch", "paper_max_acc", "paper_max_epoch",
                   "git_sha", "torch_version", "device", "num_threads", "deterministic", "config_json",
                   "hp_modality" if cfg.method == "unimodal" else "data_n_train", "code_version"):
        assert column in row.index, column
    assert row["final_n_correct"] == round(row["final_acc"] * row["n_test"])
    assert row["paper_max_acc"] >= max(row["final_acc"], row["best_val_acc"])
    assert json.loads(row["config_json"])["seed"] == 0
    epochs = results.read_epochs(tmp_path)
    assert epochs["epoch"].tolist() == list(range(cfg.epochs))
    for column in ("train_loss", "train_rho", "val_acc", "test_acc", "test_acc_head_a", "test_acc_head_v",
                   "test_rho", "lr"):
        assert column in epochs.columns, column
    assert row["paper_max_acc"] == epochs["test_acc"].max()
    preds = pq.read_table(paths.preds).to_pandas()
    assert set(preds["selection"]) == {"final", "best_val"}
    assert len(preds) == 2 * cfg.data["n_test"]
    final = preds[preds["selection"] == "final"]
    assert (final["pred"] == final["y"]).mean() == pytest.approx(row["final_acc"])


def test_validation_is_stratified_disjoint_and_fixed_by_the_split_seed():
    cfg = tiny_config()
    train = DATASETS.get("synthetic")(cfg).load().train
    kept, val = carve_validation(train, 0.1, split_seed=0)
    assert len(kept) + len(val) == len(train)
    assert not set(kept.sample_id) & set(val.sample_id)
    per_class = np.bincount(train.y.numpy())
    assert np.bincount(val.y.numpy()).tolist() == [max(1, round(0.1 * n)) for n in per_class]
    again, other = carve_validation(train, 0.1, 0)[1], carve_validation(train, 0.1, 1)[1]
    assert again.sample_id == val.sample_id and other.sample_id != val.sample_id


def test_the_run_seed_does_not_move_the_validation_or_test_split(monkeypatch, tmp_path):
    splits = {}
    original = engine.load_splits

    def spy(dataset, cfg):
        result = original(dataset, cfg)
        splits[cfg.seed] = (result.val.sample_id, result.test.sample_id)
        return result

    monkeypatch.setattr(engine, "load_splits", spy)
    engine.run(tiny_config(seed=0, epochs=1), tmp_path)
    engine.run(tiny_config(seed=3, epochs=1), tmp_path)
    assert splits[0] == splits[3]


class EpochTracking(Method):
    """Keeps the last trained epoch as method state and logs a per-step diagnostic."""

    name = "epoch-tracking"
    calibrated: list[int] = []

    def __init__(self, ctx):
        super().__init__(ctx)
        self.last_epoch = -1

    def after_backward(self, model, out, batch, ctx):
        ctx.log(step_parity=ctx.step % 2)
        if ctx.epoch > 0:  # a diagnostic that starts after a warm-up epoch
            ctx.log(after_warmup=1.0)

    def on_epoch_end(self, model, ctx):
        self.last_epoch = ctx.epoch

    def diagnostics(self):
        return {"last_epoch": self.last_epoch}

    def state_dict(self):
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state, model):
        self.last_epoch = state["last_epoch"]

    def calibrate(self, model, val, ctx):
        EpochTracking.calibrated.append((self.last_epoch, len(val)))


def test_each_selection_is_calibrated_with_its_own_method_state(tmp_path):
    METHODS.register(EpochTracking)
    EpochTracking.calibrated.clear()
    cfg = tiny_config("epoch-tracking", epochs=3)
    row = engine.run(cfg, tmp_path)
    n_val = row["n_val"]
    assert EpochTracking.calibrated == [(2, n_val), (row["best_val_epoch"], n_val)]
    epochs = read_epochs(tmp_path)
    assert epochs["diag_last_epoch"].tolist() == [0, 1, 2]
    assert epochs["diag_after_warmup"].isna().tolist() == [True, False, False]
    steps = -(-row["n_train"] // cfg.batch_size)
    assert epochs["diag_step_parity"].iloc[0] == pytest.approx(sum(s % 2 for s in range(steps)) / steps)


def test_an_unavailable_cuda_device_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(engine.RunFailed, match="CUDA is not available"):
        engine.run(tiny_config(device="cuda"), tmp_path)


def test_default_thread_count_does_not_depend_on_earlier_runs():
    """num_threads=0 is the machine default, even after a run in this process asked for 1."""
    assert engine.configure_determinism(tiny_config(num_threads=1)) == 1
    assert engine.configure_determinism(tiny_config(num_threads=0)) == engine.DEFAULT_THREADS
    assert torch.get_num_threads() == engine.DEFAULT_THREADS


def test_modality_ablation_gives_shapley_contributions(out):
    """Masked-input accuracies and Shapley values are stored per selection; phi_a + phi_v equals
    acc - acc with both removed (efficiency), and audio, the fast modality, contributes more."""
    row = engine.run(tiny_config("joint", epochs=3), out)
    for selection in ("final", "best_val"):
        phi_a, phi_v = row[f"{selection}_shapley_a"], row[f"{selection}_shapley_v"]
        assert phi_a + phi_v == pytest.approx(row[f"{selection}_acc"] - row[f"{selection}_acc_mask_av"])
        assert phi_a == pytest.approx(0.5 * ((row[f"{selection}_acc_mask_v"] - row[f"{selection}_acc_mask_av"])
                                             + (row[f"{selection}_acc"] - row[f"{selection}_acc_mask_a"])))
        assert phi_a > phi_v
        assert 0 <= row[f"{selection}_imbalance_degree"] <= 1


@pytest.mark.parametrize("step_at, expected", [("epoch_end", [1.0, 1.0, 0.1, 0.1]),
                                               ("epoch_start", [1.0, 0.1, 0.1, 0.01])])
def test_lr_step_at_moves_each_decay_one_epoch_earlier(tmp_path, step_at, expected):
    """AUG's loop calls scheduler.step() before each epoch (train_CREMAD.py ~210-212): with
    StepLR(step) the decays fall on epochs step-1, 2*step-1, ... instead of step, 2*step, ..."""
    cfg = tiny_config(epochs=4, lr=0.01, lr_gamma=0.1, lr_step=2, lr_step_at=step_at, n_train=64, n_test=32)
    engine.run(cfg, tmp_path)
    lrs = read_epochs(tmp_path).sort_values("epoch")["lr"].tolist()
    assert lrs == pytest.approx([0.01 * f for f in expected])


def test_eval_every_evaluates_every_nth_epoch_and_the_last_and_selects_among_them(tmp_path):
    cfg = tiny_config(epochs=5, eval_every=2)
    row = engine.run(cfg, tmp_path)
    epochs = read_epochs(tmp_path).sort_values("epoch")
    evaluated = epochs.loc[epochs["val_acc"].notna(), "epoch"].tolist()
    assert evaluated == epochs.loc[epochs["test_acc"].notna(), "epoch"].tolist() == [1, 3, 4]
    assert row["best_val_epoch"] in evaluated and row["paper_max_epoch"] in evaluated
    assert row["best_val_val_acc"] == epochs["val_acc"].max()
    assert row["eval_every"] == 2 and cfg.run_id != tiny_config(epochs=5).run_id


def test_lr_milestones_decay_at_each_listed_epoch(tmp_path):
    """MultiStepLR([1, 3], 0.1) replaces StepLR(lr_step): the rate falls after epochs 1 and 3."""
    cfg = tiny_config(epochs=5, lr=0.01, lr_gamma=0.1, lr_step=2, lr_milestones="[1,3]", n_train=64, n_test=32)
    row = engine.run(cfg, tmp_path)
    lrs = read_epochs(tmp_path).sort_values("epoch")["lr"].tolist()
    assert lrs == pytest.approx([0.01, 0.001, 0.001, 0.0001, 0.0001])
    assert json.loads(row["config_json"])["lr_milestones"] == [1, 3]


@pytest.mark.parametrize(("name", "cls", "coupled_decay"), [("adam", torch.optim.Adam, True),
                                                            ("adagrad", torch.optim.Adagrad, True),
                                                            ("adamw", torch.optim.AdamW, False)])
def test_each_optimizer_is_pytorchs_with_the_configured_rate_and_decay(name, cls, coupled_decay):
    cfg = tiny_config(optimizer=name, lr=0.02, weight_decay=0.5)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer, _ = engine.build_optimizer([weight], cfg)
    assert type(optimizer) is cls
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (0.02, 0.5)
    weight.grad = torch.zeros(3)  # only the decay moves the weight: L2 in the gradient, or decoupled
    optimizer.step()
    if coupled_decay:  # Adam/Adagrad normalise the decay gradient: the first step moves by lr
        torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.02))
    else:  # AdamW: w <- w (1 - lr wd), and a zero gradient adds nothing
        torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.02 * 0.5))


def test_temporary_files_a_killed_writer_left_are_removed_by_the_next_write(tmp_path):
    """Issue 15.23: kill -9 during a result write left `.<name>.*.tmp` files that no rerun removed."""
    import os

    from mmbench.results import write_text

    target = tmp_path / "x.config.yaml"
    stale, fresh = tmp_path / ".x.config.yaml.old1.tmp", tmp_path / ".x.config.yaml.new1.tmp"
    stale.write_text("half")
    fresh.write_text("another writer, now")
    os.utime(stale, (0, 0))
    write_text(target, "a: 1\n")
    assert target.read_text() == "a: 1\n" and not stale.exists() and fresh.exists()

"""How a run executes (issue 16): bf16 and channels-last on CUDA (`auto`), drop_last, the prefetching
thread and the `compile` key. None of them may change a finished run's run_id, and the prefetch and
the compiled encoders must compute what the plain loop computes."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from mmbench.config import ConfigError, RunConfig, resolve
from mmbench.data import Batch, prefetched
from mmbench.results import read_preds, run_paths
from mmbench.train import engine

from .conftest import step_counter, tiny_config, training_setup

# run_ids that mmbench issued before bf16 and channels_last took `auto` and drop_last was added (commit
# 4b2ff04, computed there with `resolve(method, "synthetic", 1, "benchmark", overrides).run_id`): the
# results users already have must keep them, or every rerun of a sweep would train again.
ISSUED_RUN_IDS = [
    ("joint", {}, "fd10bec0ca3606b9"), ("joint", {"bf16": "true"}, "e24261aa5900c02a"),
    ("joint", {"channels_last": "true"}, "b57b68aaf24a1824"), ("joint", {"epochs": "3"}, "0c6c243620546ee4"),
    ("ogm-ge", {}, "1a740d54ebf42ea2"), ("ogm-ge", {"bf16": "true"}, "de6f23b9a935ae3f"),
    ("arm", {}, "9088bcb7d99bf832"), ("arm", {"channels_last": "true"}, "b0477aeac52b0445"),
]


@pytest.mark.parametrize(("method", "overrides", "run_id"), ISSUED_RUN_IDS)
def test_run_ids_issued_before_the_new_keys_are_unchanged(method, overrides, run_id):
    assert resolve(method, "synthetic", 1, "benchmark", overrides).run_id == run_id


@pytest.mark.parametrize("overrides", [{}, {"lr_milestones": "[3,5]", "bf16": "false", "drop_last": "true"}])
def test_a_config_read_back_from_json_keeps_its_run_id(overrides):
    """Workers and resumed runs rebuild the config from JSON, where tuples come back as lists."""
    cfg = resolve("joint", "synthetic", 1, overrides=overrides)
    assert RunConfig(**json.loads(json.dumps(cfg.to_dict()))).run_id == cfg.run_id


def test_new_settings_get_new_run_ids_and_execution_keys_do_not():
    default = resolve("joint", "synthetic", 1).run_id
    explicit_off = resolve("joint", "synthetic", 1, overrides={"bf16": "false"}).run_id
    dropping = resolve("joint", "synthetic", 1, overrides={"drop_last": "true"}).run_id
    compiled = resolve("joint", "synthetic", 1, overrides={"compile": "reduce-overhead"}).run_id
    assert len({default, explicit_off, dropping}) == 3
    assert compiled == default


@pytest.mark.parametrize(("profile", "value", "device", "bf16", "channels_last"), [
    ("benchmark", "auto", "cuda", True, True),
    ("benchmark", "auto", "cpu", False, False),
    ("official", "auto", "cuda", False, False),  # the papers trained in fp32
    ("benchmark", "false", "cuda", False, False),
    ("official", "true", "cuda", True, True),
    ("benchmark", "true", "cpu", False, True),  # bf16 autocast is CUDA-only; channels-last is a layout
])
def test_auto_turns_bf16_and_channels_last_on_for_cuda_benchmark_runs(profile, value, device, bf16, channels_last):
    cfg = resolve("ogm-ge", "cremad", 0, profile, {"bf16": value, "channels_last": value})
    assert (cfg.uses("bf16", device), cfg.uses("channels_last", device)) == (bf16, channels_last)


def test_auto_keys_read_yaml_booleans_and_name_the_choices():
    assert resolve("joint", "synthetic", overrides={"bf16": True}).bf16 is True
    assert resolve("joint", "synthetic", overrides={"channels_last": "AUTO"}).channels_last == "auto"
    with pytest.raises(ConfigError, match=r"bf16='fast' is not allowed; choices: auto, true, false"):
        resolve("joint", "synthetic", overrides={"bf16": "fast"})


@pytest.mark.parametrize(("drop_last", "batches"), [(False, 7), (True, 6)])
def test_drop_last_skips_the_short_batch_and_records_it(tmp_path, drop_last, batches):
    cfg = tiny_config(drop_last=drop_last, epochs=1)  # 216 training rows after validation: 6 x 32 + 24
    steps = step_counter()
    row = engine.run(cfg, tmp_path, steps)
    assert row["n_train"] == 216
    assert steps.count == batches
    assert (row["drop_last"], row["compile"], row["bf16"], row["channels_last"]) == (drop_last, "none", False, False)


def test_drop_last_with_a_batch_larger_than_the_split_is_a_one_line_error(tmp_path):
    with pytest.raises(engine.RunFailed, match=r"drop_last=true drops every batch: batch_size=500 is more than the "
                                               r"216 training rows; lower batch_size or set drop_last=false"):
        engine.run(tiny_config(drop_last=True, batch_size=500), tmp_path)


@pytest.mark.parametrize("drop_last", [False, True])
def test_prefetched_training_equals_the_plain_loop(drop_last):
    """The same batches, the same draws: the model, the epoch's statistics and the generators' states are
    identical whether the batches come from the loop or from the prefetching thread."""
    results = []
    for prefetch in (False, True):
        cfg = tiny_config("ogm-ge", drop_last=drop_last)
        dataset, splits, ctx, model, optimizer = training_setup(cfg)
        stats = [engine.train_epoch(model, ctx.method, dataset, splits.train, optimizer, ctx, engine.Reporter(),
                                    prefetch=prefetch) for ctx.epoch in range(2)]
        results.append((stats, model.state_dict(), {k: g.get_state() for k, g in ctx.generators.items()}))
    (stats, state, generators), (stats_p, state_p, generators_p) = results
    assert stats == stats_p
    assert all(torch.equal(state[k], state_p[k]) for k in state)
    assert all(torch.equal(generators[k], generators_p[k]) for k in generators)


def _batches(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise OSError("disk gone")
        yield Batch(torch.full((2, 3), i), torch.zeros(2, 1), torch.tensor([i, i]), torch.arange(2))


def _prefetch_threads() -> int:
    return sum(t.name == "mmbench-prefetch" for t in threading.enumerate())


def test_prefetched_yields_every_batch_in_order_and_raises_the_readers_error():
    assert [int(b.y[0]) for b in prefetched(_batches(9), pin=False)] == list(range(9))
    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for batch in prefetched(_batches(9, fail_at=5), pin=False):
            seen.append(int(batch.y[0]))
    assert seen == [0, 1, 2, 3, 4]
    assert _prefetch_threads() == 0


def test_leaving_a_prefetched_loop_early_stops_its_thread():
    stream = prefetched(_batches(1000), pin=False, depth=2)
    assert int(next(stream).y[0]) == 0
    assert _prefetch_threads() == 1
    stream.close()
    assert _prefetch_threads() == 0


@pytest.mark.slow
def test_compiled_encoders_train_the_model_the_eager_loop_trains(tmp_path):
    """`compile=default` (inductor, on the CPU here) keeps the parameter names (the best state loads into
    an eager model) and trains to the same predictions within float tolerance; the run_id is the same."""
    eager = engine.run(tiny_config(epochs=1, drop_last=True), tmp_path / "eager")
    cfg = tiny_config(epochs=1, drop_last=True, compile="default")
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    compiled = engine.run(cfg, tmp_path / "compiled")
    # audio and visual, at the one training batch shape (drop_last); evaluation runs eager
    assert counters["stats"]["unique_graphs"] - graphs_before == 2
    assert compiled["run_id"] == eager["run_id"] and compiled["compile"] == "default"
    p_eager, p_compiled = (torch.tensor(read_preds(run_paths(tmp_path / name, cfg))["p_true"].to_numpy())
                           for name in ("eager", "compiled"))
    torch.testing.assert_close(p_compiled, p_eager, atol=2e-4, rtol=0)
    assert compiled["final_n_correct"] == eager["final_n_correct"]
    # the pass counter's hooks run on compiled encoders too
    assert [compiled[f"cost_{k}"] for k in ("fwd_a", "bwd_v")] == [eager[f"cost_{k}"] for k in ("fwd_a", "bwd_v")]
    assert compiled["cost_fwd_a"] == 1.0

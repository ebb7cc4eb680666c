"""Shared fixtures: a tiny synthetic configuration that trains in about a second."""

from __future__ import annotations

import os
from typing import Any

import pytest

from mmbench.config import RunConfig, resolve

TINY: dict[str, Any] = {
    "n_train": 240, "n_test": 120, "audio_size": 12, "image_size": 12,
    "epochs": 2, "batch_size": 32, "encoder_width": 8, "num_threads": 1,
    "checkpoint_every_s": 0,  # a checkpoint after every epoch, for the tests that interrupt runs
}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker runs on cores of its own. The commands a test starts inherit the
    affinity, so mmbench's default thread count (the cores this process may run on) gives each one
    only its worker's share: two workers each starting a 2-thread run on 2 cores oversubscribed
    them, and one sweep test took 205 s instead of 59 s."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not workers or not hasattr(os, "sched_setaffinity"):
        return
    cpus, index, count = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(workers)
    share = cpus[index % len(cpus)::count] if count <= len(cpus) else [cpus[index % len(cpus)]]
    os.sched_setaffinity(0, share)


# Files that train for minutes go first, longest first: pytest-xdist hands out whole files in collection order
# (--no-loadscope-reorder in pyproject.toml; by default it orders them by their number of tests, which put
# the 5 effect tests, 10 minutes on one core, last and left one worker training alone for 6 minutes), and a
# long file handed out last leaves the other worker idle meanwhile.
SLOW_FILES_FIRST = ("test_effects_opm_aug_dlc.py", "test_effects_joint_ogm.py", "test_sweep.py", "test_backends.py",
                    "test_check.py", "test_prepare.py", "test_report.py", "test_cli.py", "test_plots.py",
                    "test_engine.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES_FIRST)))


def tiny_config(method: str = "joint", seed: int = 0, **overrides: Any) -> RunConfig:
    return resolve(method, "synthetic", seed, overrides={**TINY, **overrides})


@pytest.fixture
def tiny() -> Any:
    return tiny_config


@pytest.fixture
def out(tmp_path):
    return tmp_path / "results"


def training_setup(cfg: RunConfig) -> tuple[Any, Any, Any, Any, Any]:
    """What the engine builds before the first epoch, on the CPU: (dataset, splits, context, model,
    optimizer); the context holds the method, optimizer and training split as handles for tests."""
    import torch

    from mmbench.method import RunContext
    from mmbench.registry import DATASETS, METHODS
    from mmbench.train import engine

    device = torch.device("cpu")
    dataset = DATASETS.get(cfg.dataset)(cfg)
    splits = engine.load_splits(dataset, cfg)
    ctx = RunContext(cfg, len(dataset.classes), device, engine.make_generators(cfg.seed, device),
                     steps_per_epoch=engine.steps_per_epoch(len(splits.train), cfg), train=splits.train,
                     val=splits.val)
    engine.bind_infer(ctx, dataset)
    bind_untrained_requirements(ctx)
    method = METHODS.get(cfg.method)(ctx)
    model = engine.build_model(method, ctx)
    optimizer, _ = engine.build_optimizer(method.parameters(model, ctx), cfg)
    method.extra_optimizers(model, ctx)  # the method keeps its own (e.g. cggm's classifiers')
    ctx.optimizer, ctx.method = optimizer, method
    return dataset, splits, ctx, model, optimizer


def first_batch_setup(method: str, **overrides: Any) -> tuple[Any, Any, Any]:
    """(the first training batch, augmented, the context, the model) of a tiny run of `method`, as the engine
    builds them: for tests that look inside one step."""
    cfg = tiny_config(method, **overrides)
    dataset, splits, ctx, model, _ = training_setup(cfg)
    batch = dataset.transform(next(splits.train.batches(cfg.batch_size, ctx.generator("order"))), True,
                              ctx.generator("augment"))
    return batch, ctx, model


def bind_untrained_requirements(ctx: Any) -> None:
    """`ctx.load_run` for tests that look inside one method's step: the models of the runs it requires as
    they are built (untrained, in eval mode and frozen, as the engine hands trained ones over)."""
    from mmbench.train import engine
    from mmbench.train.dependencies import required_configs

    required = required_configs(ctx.cfg)
    ctx.load_run = lambda key: engine.build_required_model(required[key], ctx)


def train_steps(cfg: RunConfig, steps: int):
    """Build the method's model from the seed and run `steps` training steps; returns
    (initial state, trained model, context), for tests that look inside a model."""
    dataset, splits, ctx, model, optimizer = training_setup(cfg)
    method = ctx.method
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    done = 0
    while done < steps:
        for batch in splits.train.batches(cfg.batch_size, ctx.generator("order")):
            method.train_step(model, dataset.transform(batch, True, ctx.generator("augment")), optimizer, ctx)
            done += 1
            if done == steps:
                break
    return initial, model, ctx


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """Full-size synthetic runs on the default protocol, each computed once per session (shared by the
    xdist workers: a worker that needs a run another one is training waits for it), on one thread: the
    thread count changes the last bits of training, and effect tests must not depend on the machine."""

    import fcntl

    from mmbench.results import is_done, read_row, run_paths
    from mmbench.train import engine
    from mmbench.train.dependencies import in_waves

    if os.environ.get("PYTEST_XDIST_WORKER"):  # one folder for the session's workers: each run trained once
        out = tmp_path_factory.getbasetemp().parent / "synthetic-results"
        out.mkdir(exist_ok=True)
    else:
        out = tmp_path_factory.mktemp("synthetic-results")

    def run_once(cfg: RunConfig) -> dict[str, Any]:
        paths = run_paths(out, cfg)
        with open(out / f".{cfg.run_id}.lock", "w") as lock:  # another worker may be training it
            fcntl.flock(lock, fcntl.LOCK_EX)
            if is_done(paths):
                return read_row(paths).to_dict()
            return engine.run(cfg, out)

    def run(method: str, seed: int, **overrides: Any) -> dict[str, Any]:
        cfg = resolve(method, "synthetic", seed, overrides={"num_threads": 1, **overrides})
        for required in (c for wave in in_waves([cfg])[:-1] for c in wave):  # e.g. umt's teachers, first
            run_once(required)
        return run_once(cfg)

    run.out = out
    return run


def step_counter() -> Any:
    """A reporter that counts training steps in `.count` (and reads nothing from the device)."""
    from mmbench.train import engine

    class StepCount(engine.Reporter):
        count = 0

        def step(self, loss: Any) -> None:
            self.count += 1

    return StepCount()


def stop_after_epoch(epoch: int) -> Any:
    """A reporter that interrupts a run (as Ctrl-C would) once `epoch` (from 0) finished."""
    from mmbench.train import engine

    class Stop(engine.Reporter):
        def epoch_finished(self, row: dict[str, Any]) -> None:
            if row["epoch"] == epoch:
                raise KeyboardInterrupt

    return Stop()


def assert_resumes_identical(method: str, out: Any, epochs: int = 3, stop_after: int = 1, **overrides: Any) -> None:
    """A run of `method` interrupted after epoch `stop_after` and run again ends as the uninterrupted run."""
    from mmbench.train import engine
    from mmbench.train.dependencies import in_waves, run_in_process

    cfg = tiny_config(method, epochs=epochs, **overrides)
    for folder in ("full", "cut"):  # the runs the method requires (e.g. umt's teachers)
        run_in_process([c for wave in in_waves([cfg])[:-1] for c in wave], out / folder)
    reference = engine.run(cfg, out / "full")
    with pytest.raises(KeyboardInterrupt):
        engine.run(cfg, out / "cut", stop_after_epoch(stop_after))
    resumed = engine.run(cfg, out / "cut")
    for key in ("final_acc", "final_n_correct", "best_val_acc", "best_val_epoch", "final_acc_head_a", "final_rho",
                "cost_fwd_a", "cost_bwd_v", "train_gflops_per_sample"):
        assert resumed[key] == reference[key], key


def interruptible() -> None:
    """`preexec_fn` of a child that a test interrupts with SIGINT: under a shell started in the background
    (`.ci/run &`) SIGINT is ignored, children inherit that, and Python then raises no KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

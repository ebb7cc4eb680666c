"""Shared fixtures: a tiny synthetic configuration that trains in about a second."""

from __future__ import annotations

from typing import Any

import pytest

from mmbench.config import RunConfig, resolve

TINY: dict[str, Any] = {
    "n_train": 240, "n_test": 120, "audio_size": 12, "image_size": 12,
    "epochs": 2, "batch_size": 32, "encoder_width": 8, "num_threads": 1,
}


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

    from mmbench import engine
    from mmbench.method import RunContext
    from mmbench.registry import DATASETS, METHODS

    device = torch.device("cpu")
    dataset = DATASETS.get(cfg.dataset)(cfg)
    splits = engine.load_splits(dataset, cfg)
    ctx = RunContext(cfg, len(dataset.classes), device, engine.make_generators(cfg.seed, device))
    method = METHODS.get(cfg.method)(ctx)
    model = engine.build_model(method, ctx)
    optimizer, _ = engine.build_optimizer(method.parameters(model, ctx), cfg)
    ctx.optimizer, ctx.method, ctx.train = optimizer, method, splits.train
    return dataset, splits, ctx, model, optimizer


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
    """Full-size synthetic runs on the default protocol, each computed once per session, on one thread:
    the thread count changes the last bits of training, and effect tests must not depend on the machine."""

    from mmbench import engine
    from mmbench.results import read_row, run_paths

    out = tmp_path_factory.mktemp("synthetic-results")

    def run(method: str, seed: int, **overrides: Any) -> dict[str, Any]:
        cfg = resolve(method, "synthetic", seed, overrides={"num_threads": 1, **overrides})
        paths = run_paths(out, cfg)
        if paths.row.exists():
            return read_row(paths).to_dict()
        return engine.run(cfg, out)

    run.out = out
    return run


def interruptible() -> None:
    """`preexec_fn` of a child that a test interrupts with SIGINT: under a shell started in the background
    (`.ci/run &`) SIGINT is ignored, children inherit that, and Python then raises no KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

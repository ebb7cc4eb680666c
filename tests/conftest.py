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

"""What the methods do to the imbalance of the embedded dataset, on full-size synthetic runs of the
default protocol paired by seed with joint training: joint itself against the unimodal runs, and OGM-GE.
(opm, aug and dlc: tests/test_effects_opm_aug_dlc.py.)

Each file's effect tests share their runs (joint, opm), trained once per file: pytest-xdist hands a
file to one worker, and the two files go to the two workers first (tests/conftest.py).
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from mmbench.config import resolve
from mmbench.results import run_paths

SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_joint_training_leaves_the_visual_modality_under_trained(synthetic_run):
    gaps = []
    for seed in SEEDS:
        joint = synthetic_run("joint", seed)
        visual_only = synthetic_run("unimodal", seed, modality="visual")
        audio_only = synthetic_run("unimodal", seed, modality="audio")
        # Both modalities are informative on their own ...
        assert visual_only["best_val_acc"] > 0.6 and audio_only["best_val_acc"] > 0.6
        # ... audio is learned fast: after one epoch of joint training it is near its ceiling,
        epochs = pq.read_table(run_paths(synthetic_run.out, resolve("joint", "synthetic", seed)).epochs)
        assert epochs["test_acc_head_a"][0].as_py() > 0.6
        assert epochs["test_acc_head_v"][0].as_py() < 0.35
        # ... and joint training leaves visual clearly below what visual alone reaches.
        gap = visual_only["final_acc"] - joint["final_acc_head_v"]
        assert gap > 0.1, f"seed {seed}: visual alone {visual_only['final_acc']:.3f}, " \
                          f"in joint {joint['final_acc_head_v']:.3f}"
        gaps.append(gap)
    assert sum(gaps) / len(gaps) > 0.3


@pytest.mark.slow
def test_ogm_ge_raises_the_slow_modality_on_synthetic(synthetic_run):
    """Seeds 0-2 of the default protocol, paired with joint training: the visual half of the fusion
    head ends higher under OGM-GE on average by more than a point, and no seed loses more than half a
    point (at one thread: +7.2, +0.2, +1.2 pp). Issue 15.1b: a per-seed `>` failed on another machine's
    thread count (25.83 % vs 25.92 %), so the effect is asserted with margins."""
    gains = [synthetic_run("ogm-ge", seed)["final_acc_head_v"] - synthetic_run("joint", seed)["final_acc_head_v"]
             for seed in (0, 1, 2)]
    assert sum(gains) / 3 > 0.01 and min(gains) > -0.005, gains

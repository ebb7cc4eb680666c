"""What the methods do to the imbalance of the embedded dataset, on full-size synthetic runs of the
default protocol paired by seed with joint training: joint itself against the unimodal runs, and OGM-GE.
(opm, aug and dlc: tests/test_effects_opm_aug_dlc.py.)

The two files share their runs, each trained once per session (`synthetic_run` in tests/conftest.py): they
go to the two pytest-xdist workers first; this one trains joint first, the other opm, then reads joint.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from mmbench.config import resolve
from mmbench.results import run_paths

SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_joint_training_leaves_the_visual_modality_under_trained(synthetic_run):
    joints = [synthetic_run("joint", seed) for seed in SEEDS]  # first: tests/test_effects_opm_aug_dlc.py reads them
    gaps = []
    for seed, joint in zip(SEEDS, joints, strict=True):
        visual_only = synthetic_run("unimodal", seed, modality="visual")
        # Both modalities are informative on their own (visual alone; audio's half of the joint head) ...
        assert visual_only["best_val_acc"] > 0.6
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

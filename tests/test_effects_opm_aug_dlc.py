"""What OPM, AUG and decision-layer calibration do to the imbalance of the embedded dataset, on full-size
synthetic runs of the default protocol paired by seed with joint training (see tests/test_effects_joint_ogm.py)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_opm_raises_the_slow_modality_and_the_fused_accuracy_on_synthetic(synthetic_run):
    opms = [synthetic_run("opm", seed) for seed in (0, 1, 2)]  # first: the other file's worker trains joint
    gains = []
    for seed, opm in zip((0, 1, 2), opms, strict=True):
        joint = synthetic_run("joint", seed)
        gains.append(opm["best_val_acc_head_v"] - joint["best_val_acc_head_v"])
        assert gains[-1] > 0, f"seed {seed}"
        assert opm["best_val_acc"] > joint["best_val_acc"], f"seed {seed}"
    assert sum(gains) / len(gains) > 0.2


@pytest.mark.slow
def test_aug_raises_the_slow_modality_and_the_fused_accuracy_on_synthetic(synthetic_run):
    for seed in (0, 1, 2):
        joint, aug = synthetic_run("joint", seed), synthetic_run("aug", seed)
        assert aug["best_val_acc_head_v"] > joint["best_val_acc_head_v"] + 0.1, f"seed {seed}"
        assert aug["best_val_acc"] > joint["best_val_acc"], f"seed {seed}"


@pytest.mark.slow
def test_dlc_reduces_the_decision_layer_bias_of_a_trained_model_on_synthetic(synthetic_run):
    """On OPM-trained models (whose visual branch is capable), calibration lowers both the
    audio logit share (D3) and the audio-decides rate (D4), seed by seed (two seeds: each retrains opm)."""
    for seed in (0, 1):
        uncalibrated, calibrated = synthetic_run("opm", seed), synthetic_run("dlc", seed, base="opm")
        assert calibrated["best_val_acc_head_v"] == uncalibrated["best_val_acc_head_v"]  # same model
        for measure in ("best_val_d3_logit_share_a", "best_val_d4_audio_decides"):
            assert calibrated[measure] < uncalibrated[measure], (seed, measure)

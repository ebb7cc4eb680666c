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
    audio logit share (D3) and the audio-decides rate (D4), seed by seed (two seeds: each retrains opm) and for
    the final and the best-val model, wherever its guard kept it: it falls back to the uncalibrated decision
    when that had the lower validation NLL (here both best-val models on an AVX-512 CPU, neither on an AVX2
    one), and then changes nothing."""
    calibrated_models = 0
    for seed in (0, 1):
        uncalibrated, calibrated = synthetic_run("opm", seed), synthetic_run("dlc", seed, base="opm")
        for selection in ("final", "best_val"):
            assert calibrated[f"{selection}_acc_head_v"] == uncalibrated[f"{selection}_acc_head_v"]  # same model
            fell_back = calibrated[f"{selection}_diag_fell_back"] == 1
            calibrated_models += not fell_back
            for measure in ("d3_logit_share_a", "d4_audio_decides"):
                now, before = calibrated[f"{selection}_{measure}"], uncalibrated[f"{selection}_{measure}"]
                assert now == before if fell_back else now < before, (seed, selection, measure)
    assert calibrated_models >= 1

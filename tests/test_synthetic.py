"""The embedded dataset must show real modality imbalance, or no method has anything to fix."""

from __future__ import annotations

import pytest
import torch

from mmbench.config import resolve
from mmbench.registry import DATASETS


def test_generation_is_fixed_by_data_seed_and_knobs_change_it():
    cfg = resolve("joint", "synthetic", overrides={"n_train": 60, "n_test": 30})
    first = DATASETS.get("synthetic")(cfg).load()
    again = DATASETS.get("synthetic")(resolve("joint", "synthetic", 5, overrides={"n_train": 60,
                                                                                     "n_test": 30})).load()
    assert torch.equal(first.test.visual, again.test.visual)  # the run seed does not move the data
    other = DATASETS.get("synthetic")(resolve("joint", "synthetic", overrides={
        "n_train": 60, "n_test": 30, "data_seed": 1})).load()
    assert not torch.equal(first.test.audio, other.test.audio)
    assert first.train.audio.shape == (60, 1, 24, 24) and first.test.visual.shape == (30, 1, 3, 24, 24)


@pytest.mark.parametrize("confusion", [0.0, 0.5])
def test_audio_confusion_caps_what_audio_can_tell(confusion):
    cfg = resolve("joint", "synthetic", overrides={"n_train": 3000, "n_test": 10, "audio_strength": 10.0,
                                                    "audio_confusion": confusion})
    train = DATASETS.get("synthetic")(cfg).load().train
    audio = train.audio.flatten(1)
    means = torch.stack([audio[train.y == c].mean(0) for c in range(6)])
    shown = (audio @ means.T).argmax(1)  # the template each clip shows (noise is negligible here)
    expected = 1 - confusion + confusion / 6  # confused clips show a uniformly random class
    assert (shown == train.y).float().mean().item() == pytest.approx(expected, abs=0.03)

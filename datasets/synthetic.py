"""`synthetic`: the embedded default, generated from a seed, with real modality imbalance.

Audio is easy: a fixed class template (a smooth random 2-D pattern) plus noise, linearly
separable, learned in a few steps — but in a fraction `audio_confusion` of the clips the
template belongs to a random class, which caps what audio alone can reach.
Visual is informative for every clip but slow: the class is the orientation of a grating
with random phase, frequency jitter and a class-independent colour, in noise. No linear
function of the pixels sees it; encoders must learn oriented filters. Trained jointly,
the fused model settles on audio early and the visual encoder stays under-trained.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import torch

from mmbench.config import check_range
from mmbench.data import Batch, Dataset, Splits, TensorSplit
from mmbench.registry import register_dataset


@register_dataset
class Synthetic(Dataset):
    name = "synthetic"
    description = "Generated audio-visual data with a fast (audio) and a slow (visual) modality; no files."
    citation = "mmbench built-in"
    version = 1
    params = {
        "n_train": 2400, "n_test": 1200, "num_classes": 6, "data_seed": 0,
        "audio_size": 24, "image_size": 24, "frames": 1,
        "audio_strength": 2.0, "audio_confusion": 0.3,
        "visual_strength": 1.0, "visual_envelope": 3.0, "augment_noise": 0.2,
    }
    help = {
        "n_train": "training clips (validation is carved from these)",
        "n_test": "test clips (fixed by data_seed, the same for every run seed)",
        "num_classes": "number of classes",
        "data_seed": "seed of the generated data and of the test split",
        "frames": "frames per clip (each with its own grating phase and place)",
        "visual_envelope": "width (pixels) of the Gaussian window around the grating",
        "audio_size": "audio 'spectrogram' is audio_size x audio_size",
        "image_size": "frames are 3 x image_size x image_size",
        "audio_strength": "template amplitude over unit noise: higher = easier audio",
        "audio_confusion": "fraction of clips whose audio shows a random class (caps audio-only accuracy)",
        "visual_strength": "grating amplitude over unit noise: higher = easier visual",
        "augment_noise": "std of fresh Gaussian noise added to both inputs in training",
    }
    defaults = {
        "epochs": 12, "batch_size": 64, "lr": 0.02, "lr_step": 8, "lr_gamma": 0.2,
        "encoder": "small_cnn", "encoder_width": 16, "eval_batch_size": 512,
    }

    # (lowest, highest) of each setting: sizes the encoders can take, fractions in [0, 1].
    ranges = {
        "n_train": (10, math.inf), "n_test": (1, math.inf), "num_classes": (2, math.inf), "data_seed": (0, math.inf),
        "audio_size": (8, math.inf), "image_size": (8, math.inf), "frames": (1, math.inf),
        "audio_strength": (0, math.inf), "audio_confusion": (0, 1), "visual_strength": (0, math.inf),
        "visual_envelope": (0.5, math.inf), "augment_noise": (0, math.inf),
    }

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        for key, (low, high) in cls.ranges.items():
            check_range(key, cfg.data[key], low, high)

    @property
    def classes(self) -> list[str]:
        return [f"class{c}" for c in range(self.p["num_classes"])]

    def load(self) -> Splits:
        return _generate(json.dumps(self.p, sort_keys=True))

    def transform(self, batch: Batch, train: bool, generator: torch.Generator) -> Batch:
        std = self.p["augment_noise"]
        if not train or std <= 0:
            return batch
        noise_a = torch.randn(batch.audio.shape, generator=generator, device=batch.audio.device)
        noise_v = torch.randn(batch.visual.shape, generator=generator, device=batch.visual.device)
        return Batch(batch.audio + std * noise_a, batch.visual + std * noise_v, batch.y, batch.index)


@functools.lru_cache(maxsize=4)
def _generate(params_json: str) -> Splits:
    p = json.loads(params_json)
    g = torch.Generator().manual_seed(p["data_seed"])
    c, s = p["num_classes"], p["audio_size"]
    templates = _smooth_patterns(c, s, g)
    n = p["n_train"] + p["n_test"]
    y = torch.arange(n) % c
    y = y[torch.randperm(n, generator=g)]

    confused = torch.rand(n, generator=g) < p["audio_confusion"]
    audio_class = torch.where(confused, torch.randint(0, c, (n,), generator=g), y)
    audio = p["audio_strength"] * templates[audio_class] + torch.randn(n, s, s, generator=g)
    visual = _gratings(y, c, p["frames"], p["image_size"], p["visual_strength"],
                      p["visual_envelope"], g)

    ids = [f"syn{i:06d}" for i in range(n)]
    groups = [f"g{i % 40:02d}" for i in range(n)]

    def split(rows: slice) -> TensorSplit:
        return TensorSplit(audio[rows, None].contiguous(), visual[rows].contiguous(), y[rows],
                           ids[rows], groups[rows])

    return Splits(train=split(slice(0, p["n_train"])), test=split(slice(p["n_train"], n)))


def _smooth_patterns(count: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Unit-RMS random patterns, low-pass filtered so they look like spectrogram blobs."""
    raw = torch.randn(count, 1, size, size, generator=g)
    kernel = torch.ones(1, 1, 5, 5) / 25
    smooth = torch.nn.functional.conv2d(raw, kernel, padding=2)[:, 0]
    return smooth / smooth.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()


def _gratings(y: torch.Tensor, num_classes: int, frames: int, size: int, strength: float,
              envelope: float, g: torch.Generator) -> torch.Tensor:
    """(N, frames, 3, size, size): orientation = class, random phase, frequency and colour."""
    n = len(y)
    angle = (y.float() + 0.15 * (torch.rand(n, generator=g) - 0.5)) * math.pi / num_classes
    freq = 0.12 + 0.08 * torch.rand(n, generator=g)  # cycles per pixel
    coords = torch.arange(size, dtype=torch.float32) - size / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    phase = 2 * math.pi * torch.rand(n, frames, generator=g)
    proj = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]
    wave = torch.sin(2 * math.pi * freq[:, None, None, None] * proj[:, None] + phase[..., None, None])
    # A Gabor patch: the grating under a Gaussian envelope at a random place in each frame.
    centre = (torch.rand(n, frames, 2, generator=g) - 0.5) * (size - 2 * envelope)
    dist2 = (xx - centre[..., 0, None, None]) ** 2 + (yy - centre[..., 1, None, None]) ** 2
    wave = wave * torch.exp(-dist2 / (2 * envelope**2))
    colour = torch.rand(n, 1, 3, 1, 1, generator=g) + 0.5
    frames_ = strength * colour * wave[:, :, None]
    return frames_ + torch.randn(n, frames, 3, size, size, generator=g)

"""Batch-level image augmentation on the training device, for uint8 frame stacks from the cache.

The original loaders transform one PIL image at a time in DataLoader workers; here the same
transforms run on whole batches of tensors: torchvision's RandomResizedCrop (integer boxes,
area 8-100 %, aspect 3/4-4/3, its ten tries and its central fallback) + horizontal flip in training,
a squashing resize at test time (`Resize((s, s))`), ImageNet normalisation. The crop is drawn once per
clip and shared by its frames, with every random draw on the device.

On the CPU each box is resized by itself on uint8 (torch's fast path); on a GPU all boxes of a batch
are resampled at once, by two batched matrix products with the bilinear (antialiased when shrinking)
weights that `F.interpolate` uses, so no step waits for the host. The two agree to uint8 rounding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: RandomResizedCrop.get_params tries this many boxes before its central fallback.
CROP_TRIES = 10


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, h, w) as float64 on the generator's device, drawn as
    torchvision's RandomResizedCrop.get_params draws them: up to 10 tries of an area fraction uniform in
    `scale` and an aspect log-uniform in `ratio`, the first that fits kept, else the central crop of
    the nearest allowed aspect. All tries are drawn at once (no host read decides how many)."""
    device, f64 = generator.device, torch.float64
    area = torch.empty(n, CROP_TRIES, device=device, dtype=f64).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(n, CROP_TRIES, device=device, dtype=f64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()  # half to even, as round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
    found = fits.any(1)
    # the fallback: the whole image, narrowed to the nearest allowed aspect
    in_ratio = width / height
    fallback_w = float(width if in_ratio <= max(ratio) else round(height * max(ratio)))
    fallback_h = float(height if in_ratio >= min(ratio) else round(width / min(ratio)))
    w = torch.where(found, w.gather(1, first)[:, 0], fallback_w)
    h = torch.where(found, h.gather(1, first)[:, 0], fallback_h)
    top = (torch.rand(n, device=device, generator=generator, dtype=f64) * (height - h + 1)).floor()
    left = (torch.rand(n, device=device, generator=generator, dtype=f64) * (width - w + 1)).floor()
    top = torch.where(found, top, ((height - h) / 2).floor())
    left = torch.where(found, left, ((width - w) / 2).floor())
    return torch.stack([top, left, h, w], 1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    if images.dtype == torch.uint8 and images.device.type != "cpu":
        images = images.float()  # uint8 bilinear resizing is a CPU-only fast path
    # Antialiasing (as torchvision's Resize on tensors) matters only when shrinking.
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=shrink, align_corners=False)


def resized_crops(images: torch.Tensor, boxes: list[tuple[int, int, int, int]], flips: list[bool],
                  size: int) -> torch.Tensor:
    """Crop each (C, H, W) image to its box, mirror where asked, resize to size x size (one at a time)."""
    out = []
    for image, (top, left, h, w), flip in zip(images, boxes, flips, strict=True):
        crop = _resize(image[None, :, top:top + h, left:left + w], size)
        out.append(crop.flip(-1) if flip else crop)
    return torch.cat(out)


def resampling_weights(start: torch.Tensor, length: torch.Tensor, full: int, size: int,
                       antialias: torch.Tensor) -> torch.Tensor:
    """(N, size, full) float64 weights that resample the span [start, start + length) of an axis of
    `full` pixels to `size`, as F.interpolate(mode="bilinear", align_corners=False) does: with
    `antialias` the triangle filter widened by the scale and renormalised (PyTorch's
    `_compute_indices_weights_aa`), else the two taps of the clamped source coordinate."""
    f64 = torch.float64
    length = length.to(f64)[:, None, None]
    scale = length / size
    centre = scale * (torch.arange(size, device=start.device, dtype=f64)[None, :, None] + 0.5)
    pixel = torch.arange(full, device=start.device, dtype=f64)[None, None, :] - start.to(f64)[:, None, None]
    # antialiased: support max(scale, 1) around the centre, taps [xmin, xmax) inside the span
    support = scale.clamp(min=1.0)
    xmin = (centre - support + 0.5).trunc().clamp(min=0)
    xmax = torch.minimum((centre + support + 0.5).trunc(), length)
    taps = (pixel >= xmin) & (pixel < xmax)
    filtered = (1 - ((pixel - centre + 0.5) / support).abs()).clamp(min=0) * taps
    filtered = filtered / filtered.sum(-1, keepdim=True)
    # plain bilinear: source x = scale (j + 0.5) - 0.5, clamped to the span
    source = (centre - 0.5).clamp(min=0)
    x0 = source.floor()
    x1 = torch.minimum(x0 + 1, length - 1)
    lam = source - x0
    bilinear = (pixel == x0) * (1 - lam) + (pixel == x1) * lam
    return torch.where(antialias[:, None, None], filtered, bilinear)


def batched_resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """`resized_crops` of a whole batch at once, in float on the images' device: boxes (N, 4) as
    crop_boxes gives them and flips (N,) bool stay tensors. A box antialiases where it shrinks an axis,
    as `_resize` does."""
    top, left, h, w = boxes.to(images.device).unbind(1)
    antialias = (h > size) | (w > size)
    rows = resampling_weights(top, h, images.shape[-2], size, antialias).float()  # (N, size, H)
    cols = resampling_weights(left, w, images.shape[-1], size, antialias).float()  # (N, size, W)
    cols = torch.where(flips.to(images.device)[:, None, None], cols.flip(1), cols)  # mirrored: outputs reversed
    return (rows[:, None] @ images.float() @ cols[:, None].transpose(-1, -2)).clamp_(0, 255)


@functools.lru_cache(maxsize=8)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    return 1 / (255 * std), mean / std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0-255 images (uint8 or float) -> float, (x / 255 - mean) / std in one fused pass; the constants
    are made once per device."""
    scale, shift = _normalisation(images.device)
    return images.float().mul_(scale).sub_(shift)


def frames_to_model_input(frames: torch.Tensor, size: int, train: bool, generator: torch.Generator,
                          batched: bool | None = None) -> torch.Tensor:
    """(B, T, 3, S, S) uint8 -> (B, T, 3, size, size) float, augmented in training, normalised.
    `batched` (default: off the CPU) resamples all crops at once instead of one by one."""
    b, t = frames.shape[:2]
    images = frames.flatten(0, 1)
    if train:
        boxes = crop_boxes(b, images.shape[-2], images.shape[-1], generator).repeat_interleave(t, 0)
        flips = (torch.rand(b, device=generator.device, generator=generator) < 0.5).repeat_interleave(t)
        if images.device.type != "cpu" if batched is None else batched:
            images = batched_resized_crops(images, boxes, flips, size)
        else:  # the CPU's uint8 path needs the boxes as numbers: a read, but no device to wait for
            images = resized_crops(images, [tuple(int(v) for v in box) for box in boxes.tolist()], flips.tolist(),
                                   size)
    else:
        images = _resize(images, size)
    return normalize(images).view(b, t, 3, size, size)

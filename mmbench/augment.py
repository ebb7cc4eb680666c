"""Batch-level image augmentation on the training device, for uint8 frame stacks from the cache.

The original loaders transform one PIL image at a time in DataLoader workers; here the same
transforms run on whole batches of tensors: torchvision's RandomResizedCrop (integer boxes,
area 8-100 %, aspect 3/4-4/3) + horizontal flip in training, a squashing resize at test time
(`Resize((s, s))`), ImageNet normalisation. The crop is drawn once per clip and shared by its
frames. On the CPU the resizing runs on uint8 (torch's fast path), and the conversion to float
and the normalisation are one fused pass at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> list[tuple[int, int, int, int]]:
    """n integer boxes (top, left, h, w) drawn as RandomResizedCrop draws them: area fraction
    uniform in `scale`, aspect log-uniform in `ratio`. Where torchvision retries a box that does
    not fit, the box is shrunk to fit instead."""
    device = generator.device
    area = torch.empty(n, device=device, dtype=torch.float64).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(n, device=device, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).round().clamp(1, width)
    h = torch.sqrt(area / aspect).round().clamp(1, height)
    top = (torch.rand(n, device=device, generator=generator, dtype=torch.float64) * (height - h + 1)).floor()
    left = (torch.rand(n, device=device, generator=generator, dtype=torch.float64) * (width - w + 1)).floor()
    return [tuple(int(v) for v in box) for box in torch.stack([top, left, h, w], 1).cpu().tolist()]


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
    """Crop each (C, H, W) image to its box, mirror where asked, resize to size x size."""
    out = []
    for image, (top, left, h, w), flip in zip(images, boxes, flips, strict=True):
        crop = _resize(image[None, :, top:top + h, left:left + w], size)
        out.append(crop.flip(-1) if flip else crop)
    return torch.cat(out)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0-255 images (uint8 or float) -> float, (x / 255 - mean) / std in one fused pass."""
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    return images.float().mul_(1 / (255 * std)).sub_(mean / std)


def frames_to_model_input(frames: torch.Tensor, size: int, train: bool, generator: torch.Generator) -> torch.Tensor:
    """(B, T, 3, S, S) uint8 -> (B, T, 3, size, size) float, augmented in training, normalised."""
    b, t = frames.shape[:2]
    images = frames.flatten(0, 1)
    if train:
        boxes = crop_boxes(b, images.shape[-2], images.shape[-1], generator)
        flips = (torch.rand(b, device=generator.device, generator=generator) < 0.5).tolist()
        images = resized_crops(images, [box for box in boxes for _ in range(t)],
                               [flip for flip in flips for _ in range(t)], size)
    else:
        images = _resize(images, size)
    return normalize(images).view(b, t, 3, size, size)

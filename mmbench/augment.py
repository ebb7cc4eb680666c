"""Batch-level image augmentation on the training device, for uint8 frame stacks from the cache.

The original loaders transform one PIL image at a time in DataLoader workers; here the
same transforms run on whole batches as tensor ops: RandomResizedCrop + horizontal flip in
training, a squashing resize at test time (torchvision `Resize((s, s))`), ImageNet
normalisation. The crop is drawn once per clip and shared by its frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_boxes(n: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) boxes (x0, y0, w, h) as fractions of the image, as RandomResizedCrop draws them:
    area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`. Where torchvision
    retries a box that does not fit, the box is shrunk to fit instead."""
    device = generator.device
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    x0 = torch.rand(n, device=device, generator=generator) * (1 - w)
    y0 = torch.rand(n, device=device, generator=generator) * (1 - h)
    return torch.stack([x0, y0, w, h], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each (C, H, W) image to its box, mirror where `flip`, resize to size x size (bilinear)."""
    x0, y0, w, h = boxes.unbind(1)
    sign = 1.0 - 2.0 * flip.to(images.dtype)
    theta = torch.zeros(len(images), 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * x0 + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * y0 + h - 1
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def frames_to_model_input(frames: torch.Tensor, size: int, train: bool, generator: torch.Generator) -> torch.Tensor:
    """(B, T, 3, S, S) uint8 -> (B, T, 3, size, size) float, augmented in training, normalised."""
    b, t = frames.shape[:2]
    images = frames.flatten(0, 1).float().div_(255)
    if train:
        boxes = crop_boxes(b, generator).repeat_interleave(t, dim=0)
        flip = (torch.rand(b, device=generator.device, generator=generator) < 0.5).repeat_interleave(t)
        images = resized_crop(images, boxes.to(images.device), flip.to(images.device), size)
    elif images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return ((images - mean) / std).view(b, t, 3, size, size)

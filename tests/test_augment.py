import torch
import torch.nn.functional as F

from mmbench.augment import IMAGENET_MEAN, IMAGENET_STD, crop_boxes, frames_to_model_input, normalize, resized_crops


def _images(n=2, size=16):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_full_box_without_flip_is_the_identity():
    images = _images()
    out = resized_crops(images, [(0, 0, 16, 16)] * 2, [False, False], 16)
    assert torch.equal(out, images)


def test_flip_mirrors_the_columns():
    images = _images()
    out = resized_crops(images, [(0, 0, 16, 16)] * 2, [True, False], 16)
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])


def test_a_box_is_cut_then_resized():
    images = _images(1, 16)
    out = resized_crops(images, [(2, 4, 8, 6)], [False], 12)
    crop = images[:, :, 2:10, 4:10].float()
    expected = F.interpolate(crop, size=(12, 12), mode="bilinear", antialias=True, align_corners=False)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 12, 12)
    assert (out.float() - expected).abs().max() <= 1  # uint8 rounding


def test_crop_boxes_follow_random_resized_crop_ranges():
    boxes = torch.tensor(crop_boxes(4000, 100, 120, torch.Generator().manual_seed(1)), dtype=torch.float64)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 120).all()
    area = h * w / (100 * 120)
    assert area.min() >= 0.08 * 0.7 and area.max() <= 1
    assert 0.45 < area.mean() < 0.6  # uniform on [0.08, 1] has mean 0.54 (a little less after shrinking)
    unclipped = (w < 120) & (h < 100) & (w > 20)
    ratio = w[unclipped] / h[unclipped]
    assert ratio.min() > 0.75 * 0.9 and ratio.max() < 4 / 3 * 1.1  # within rounding of 3/4..4/3
    assert len({tuple(b) for b in boxes.tolist()}) > 3000  # boxes vary


def test_eval_input_is_resized_and_imagenet_normalised():
    frames = torch.full((2, 3, 3, 8, 8), 255, dtype=torch.uint8)
    frames[1] = 0
    out = frames_to_model_input(frames, 8, train=False, generator=torch.Generator())
    assert out.shape == (2, 3, 3, 8, 8) and out.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(out[0, :, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        assert torch.allclose(out[1, :, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))
    assert frames_to_model_input(frames, 4, train=False, generator=torch.Generator()).shape == (2, 3, 3, 4, 4)
    assert torch.allclose(normalize(frames[0].float()), normalize(frames[0]))


def test_training_crop_is_shared_by_a_clips_frames_and_seeded():
    frames = torch.randint(0, 256, (4, 3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    frames[:, 1] = frames[:, 0]  # identical frames must get the identical crop
    a = frames_to_model_input(frames, 12, train=True, generator=torch.Generator().manual_seed(5))
    b = frames_to_model_input(frames, 12, train=True, generator=torch.Generator().manual_seed(5))
    c = frames_to_model_input(frames, 12, train=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], a[:, 1])

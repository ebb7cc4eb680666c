import torch
import torch.nn.functional as F

from mmbench.augment import IMAGENET_MEAN, IMAGENET_STD, crop_boxes, frames_to_model_input, resized_crop


def _images(n=2, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_full_box_without_flip_is_the_identity():
    images = _images()
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    out = resized_crop(images, boxes, torch.tensor([False, False]), 16)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_flip_mirrors_the_columns():
    images = _images()
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    out = resized_crop(images, boxes, torch.tensor([True, False]), 16)
    torch.testing.assert_close(out[0], images[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], images[1], atol=1e-5, rtol=0)


def test_crop_of_the_left_half_equals_resizing_that_half():
    images = _images(1, 16)
    out = resized_crop(images, torch.tensor([[0.0, 0.0, 0.5, 1.0]]), torch.tensor([False]), 16)
    expected = F.interpolate(images[..., :8], size=(16, 16), mode="bilinear", align_corners=False)
    # Away from the crop's right edge (where the sampler may look one pixel past the crop).
    torch.testing.assert_close(out[..., :14], expected[..., :14], atol=1e-5, rtol=0)


def test_crop_boxes_follow_random_resized_crop_ranges():
    boxes = crop_boxes(4000, torch.Generator().manual_seed(1))
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 * 0.75 - 1e-6  # shrunk boxes lose at most the clipped side
    assert area.max() <= 1 + 1e-6
    assert 0.45 < area.mean() < 0.6  # uniform on [0.08, 1] has mean 0.54 (a little less after clipping)
    ratio = w / h
    unclipped = (w < 1) & (h < 1)
    assert (ratio[unclipped] >= 0.75 - 1e-4).all() and (ratio[unclipped] <= 4 / 3 + 1e-4).all()


def test_eval_input_is_resized_and_imagenet_normalised():
    frames = torch.full((2, 3, 3, 8, 8), 255, dtype=torch.uint8)
    frames[1] = 0
    out = frames_to_model_input(frames, 8, train=False, generator=torch.Generator())
    assert out.shape == (2, 3, 3, 8, 8)
    for c in range(3):
        assert torch.allclose(out[0, :, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        assert torch.allclose(out[1, :, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))
    assert frames_to_model_input(frames, 4, train=False, generator=torch.Generator()).shape == (2, 3, 3, 4, 4)


def test_training_crop_is_shared_by_a_clips_frames_and_seeded():
    frames = torch.randint(0, 256, (4, 3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    frames[:, 1] = frames[:, 0]  # identical frames must get the identical crop
    a = frames_to_model_input(frames, 12, train=True, generator=torch.Generator().manual_seed(5))
    b = frames_to_model_input(frames, 12, train=True, generator=torch.Generator().manual_seed(5))
    c = frames_to_model_input(frames, 12, train=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a[:, 0], a[:, 1])

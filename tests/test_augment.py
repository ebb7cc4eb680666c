import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mmbench.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batched_resized_crops,
    crop_boxes,
    frames_to_model_input,
    normalize,
    resized_crops,
)


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
    boxes = crop_boxes(4000, 100, 120, torch.Generator().manual_seed(1))
    assert boxes.dtype == torch.float64 and torch.equal(boxes, boxes.round())
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 120).all()
    area = h * w / (100 * 120)
    assert area.min() >= 0.08 * 0.95 and area.max() <= 1
    assert 0.45 < area.mean() < 0.6  # uniform on [0.08, 1] has mean 0.54 (a little less after the retries)
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


@pytest.mark.parametrize("height, width", [(224, 224), (100, 160)])
def test_crop_boxes_have_torchvisions_distribution(height, width):
    """Issue 16.1: the boxes are drawn on the device, all tries at once; their area, aspect and position
    must be distributed as torchvision's RandomResizedCrop.get_params draws them one by one (two-sample
    Kolmogorov-Smirnov tests at 0.1 %; on a 100 x 160 image many first tries do not fit)."""
    from torchvision.transforms import RandomResizedCrop

    n = 3000
    ours = crop_boxes(n, height, width, torch.Generator().manual_seed(7))
    torch.manual_seed(8)
    image = torch.zeros(1, height, width)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                          dtype=torch.float64)
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()

    def features(boxes):
        top, left, h, w = boxes.unbind(1)
        return {"area": h * w, "aspect": w / h, "centre_y": top + h / 2, "centre_x": left + w / 2}

    for name, (a, b) in {k: (v, features(theirs)[k]) for k, v in features(ours).items()}.items():
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 0.001, name


def test_the_central_fallback_where_no_try_fits():
    """get_params falls back to the central crop of the nearest allowed aspect (area 100 % never fits a
    2:1 image at aspect <= 4/3)."""
    boxes = crop_boxes(50, 100, 200, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    assert torch.equal(boxes, torch.tensor([[0.0, 33.0, 100.0, 133.0]]).expand(50, 4))


def _random_boxes(n, height, width, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, height + 1, (n,), generator=g)
    w = torch.randint(1, width + 1, (n,), generator=g)
    top = (torch.rand(n, generator=g) * (height - h + 1)).floor().long()
    left = (torch.rand(n, generator=g) * (width - w + 1)).floor().long()
    return torch.stack([top, left, h, w], 1).double(), torch.rand(n, generator=g) < 0.5


@pytest.mark.parametrize("size", [12, 24])  # mostly shrinking, mostly growing
def test_batched_crops_equal_the_per_image_crops(size):
    """Issue 16.1: one batched resampling equals F.interpolate on each crop (float: to float rounding) and
    the CPU's per-image uint8 path (to uint8 rounding), for shrinking, growing and mixed boxes, flipped
    or not."""
    images = torch.randint(0, 256, (64, 3, 20, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    boxes, flips = _random_boxes(64, 20, 28, seed=size)
    batched = batched_resized_crops(images, boxes, flips, size)
    as_list = [tuple(int(v) for v in box) for box in boxes.tolist()]
    per_image = resized_crops(images, as_list, flips.tolist(), size)
    assert (batched - per_image.float()).abs().max() <= 1.001  # the uint8 path rounds its fixed-point result
    for image, (top, left, h, w), flip, got in zip(images, as_list, flips.tolist(), batched, strict=True):
        crop = image[None, :, top:top + h, left:left + w].float()
        shrink = h > size or w > size
        expected = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=shrink, align_corners=False)[0]
        torch.testing.assert_close(got, expected.flip(-1) if flip else expected, atol=2e-3, rtol=0)


def test_batched_and_per_image_training_inputs_agree():
    frames = torch.randint(0, 256, (8, 2, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    a = frames_to_model_input(frames, 16, train=True, generator=torch.Generator().manual_seed(4), batched=True)
    b = frames_to_model_input(frames, 16, train=True, generator=torch.Generator().manual_seed(4), batched=False)
    assert a.shape == b.shape == (8, 2, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1.01 / (255 * min(IMAGENET_STD)), rtol=0)  # one uint8 level

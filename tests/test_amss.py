"""AMSS against the official code (njustkmg/TPAMI-AMSS @3161ecc, `AMSS/train_test.py`): hand values of its shares
(METHODS2 §19.4) and coefficients, and its channel masks."""

from __future__ import annotations

import math

import torch

from mmbench.methods.amss import channel_mask, channel_shares, mask_coefficients, masked_convolutions
from mmbench.train.models import Encoder, ResNet18, SmallCNN

from .conftest import assert_resumes_identical


def test_shares_of_lines_80_88_by_hand():
    shares = channel_shares(torch.tensor([2.0, 1.0]), 0.2)  # raw coeff_a = 1 / (1 + e^5) = 0.006693: clamped
    torch.testing.assert_close(shares, torch.tensor([0.1, 0.9]))
    shares = channel_shares(torch.tensor([1.05, 1.0]), 0.2)
    torch.testing.assert_close(shares, torch.tensor([0.437823, 0.562177]), atol=1e-6, rtol=0)
    assert math.ceil(64 * 0.437823) == 29  # channels kept of a 64-channel conv


def test_coefficients_of_lines_38_97_by_hand():
    """y = (0, 1): pi = (1/2, 1/2), HY = ln 2; z_a = 2 I: CE = ln(1 + e^-2); z_v = 0: CE = ln 2; zero features of 2
    dims: H = ln 2. r_a = (HY + 0.5 - ln(1 + e^-2)) / ln 2, r_v = 0.5 / ln 2."""
    y = torch.tensor([0, 1])
    z_a, z_v, feat = 2 * torch.eye(2), torch.zeros(2, 2), torch.zeros(2, 2)
    r_a = (math.log(2) + 0.5 - math.log(1 + math.exp(-2))) / math.log(2)
    r_v = 0.5 / math.log(2)
    coeffs = mask_coefficients(z_a, z_v, feat, feat, y, num_classes=2, temperature=3.0)
    expected = 1 / (1 + math.exp((r_a - r_v) / 3.0))
    torch.testing.assert_close(coeffs, torch.tensor([expected, 1 - expected]))
    # a numerator <= 0 (y = (0, 0): HY = 0, and both CE = ln 2 > 0.5): half each
    torch.testing.assert_close(mask_coefficients(torch.zeros(2, 2), z_v, feat, feat, torch.tensor([0, 0]), 2, 0.2),
                               torch.tensor([0.5, 0.5]))


def test_the_label_histogram_ends_at_the_largest_label_in_the_batch():
    """`torch.bincount(labels)` has max label + 1 entries: labels (0, 0, 1) of 3 classes give pi = (2/3, 1/3), and
    HY = -sum pi (pi - log(e^(2/3) + e^(1/3))), not the 3-entry histogram's."""
    y = torch.tensor([0, 0, 1])
    pi = [2 / 3, 1 / 3]
    hy = -sum(p * (p - math.log(sum(math.exp(q) for q in pi))) for p in pi)
    z_a = 3 * torch.nn.functional.one_hot(y, 3).float()
    r_a = (hy + 0.5 - math.log(1 + 2 * math.exp(-3))) / math.log(2)
    r_v = (hy + 0.5 - math.log(3)) / math.log(2)
    coeffs = mask_coefficients(z_a, torch.zeros(3, 3), torch.zeros(3, 2), torch.zeros(3, 2), y, 3, temperature=3.0)
    expected = 1 / (1 + math.exp((r_a - r_v) / 3.0))
    torch.testing.assert_close(coeffs, torch.tensor([expected, 1 - expected]))


def test_channel_masks_keep_the_drawn_channels_and_amss_plus_reweights_them():
    grad = torch.ones(4, 1, 1, 1) * torch.tensor([1.0, 2.0, 0.0, 1.0])[:, None, None, None]
    generator = torch.Generator().manual_seed(0)
    # 3 of 4 channels (ceil(4 * 0.7)): the zero-gradient channel has probability 0 and is never drawn
    mask = channel_mask(grad, torch.tensor(0.7), generator, unbiased=False)
    assert mask.tolist() == [1.0, 1.0, 0.0, 1.0]
    probs = torch.tensor([1.0, 4.0, 0.0, 1.0]) / 6
    mask = channel_mask(grad, torch.tensor(0.7), generator, unbiased=True)
    torch.testing.assert_close(mask, torch.tensor([1, 1, 0, 1.0]) / (probs + 0.25))


def test_the_draw_without_replacement_follows_the_gradient_importance():
    """One channel of three drawn with probabilities (0.7, 0.2, 0.1), as `torch.multinomial` would."""
    grad = torch.tensor([0.7, 0.2, 0.1]).sqrt()[:, None, None, None]
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([channel_mask(grad, torch.tensor(0.1), generator, False) for _ in range(4000)])
    assert draws.sum(dim=1).eq(1).all()
    torch.testing.assert_close(draws.mean(dim=0), torch.tensor([0.7, 0.2, 0.1]), atol=0.025, rtol=0)


def test_the_masked_convolutions_are_the_residual_ones():
    resnet = masked_convolutions(Encoder(ResNet18(1)))
    assert len(resnet) == 16 and all(conv.kernel_size == (3, 3) for conv in resnet)  # 8 blocks x 2, no stem
    assert len(masked_convolutions(Encoder(SmallCNN(1, width=4)))) == 3


def test_a_run_resumed_after_an_interruption_ends_identical(tmp_path):
    assert_resumes_identical("amss", tmp_path)

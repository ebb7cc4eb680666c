from __future__ import annotations

import pytest
import torch

from mmbench.train.models import (
    ConcatFusion,
    Encoder,
    FiLMFusion,
    GatedFusion,
    ResNet18,
    SmallCNN,
    SumFusion,
    build_av_model,
)

from .conftest import tiny_config


def test_concat_fusion_splits_weight_and_halves_bias():
    torch.manual_seed(0)
    fusion = ConcatFusion(3, 2, 4)
    f_a, f_v = torch.randn(5, 3), torch.randn(5, 2)
    out = fusion(f_a, f_v)
    w, b = fusion.fc.weight, fusion.fc.bias
    torch.testing.assert_close(out.logits, torch.cat([f_a, f_v], 1) @ w.T + b)
    torch.testing.assert_close(out.logits_a, f_a @ w[:, :3].T + b / 2)
    torch.testing.assert_close(out.logits_v, f_v @ w[:, 3:].T + b / 2)
    torch.testing.assert_close(out.logits_a + out.logits_v, out.logits)


def test_sum_fusion_logits_are_the_two_heads_added():
    fusion = SumFusion(3, 2, 4)
    f_a, f_v = torch.randn(5, 3), torch.randn(5, 2)
    out = fusion(f_a, f_v)
    torch.testing.assert_close(out.logits_a, fusion.fc_a(f_a))
    torch.testing.assert_close(out.logits, fusion.fc_a(f_a) + fusion.fc_v(f_v))


def test_sum_fusion_evaluates_each_modality_with_half_its_bias():
    """OGM-GE main.py: train() scores use fc_x(a) with the full bias (~82-86), valid() evaluates
    each modality with bias / 2 (~194-198); the fused logits are the same in both."""
    fusion = SumFusion(3, 2, 4)
    with torch.no_grad():
        fusion.fc_a.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
        fusion.fc_v.bias.copy_(torch.tensor([0.0, 4.0, -1.0, 2.0]))
    f_a, f_v = torch.randn(5, 3), torch.randn(5, 2)
    train_out = fusion.train()(f_a, f_v)
    eval_out = fusion.eval()(f_a, f_v)
    torch.testing.assert_close(eval_out.logits, train_out.logits)
    torch.testing.assert_close(eval_out.logits_a, f_a @ fusion.fc_a.weight.T + torch.tensor([0.5, -1.0, 0.25, 0.0]))
    torch.testing.assert_close(eval_out.logits_v, f_v @ fusion.fc_v.weight.T + torch.tensor([0.0, 2.0, -0.5, 1.0]))
    torch.testing.assert_close(train_out.logits_v, fusion.fc_v(f_v))


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_linear_init_xavier_normal_zero_bias_by_default(fusion):
    """OGM-GE utils/utils.py ~15-19 (and AUG utils/utils.py ~81-89): every nn.Linear gets
    xavier_normal_ weights (std = sqrt(2 / (fan_in + fan_out))) and a zero bias."""
    torch.manual_seed(0)
    model = build_av_model(tiny_config(fusion=fusion, encoder_width=64), 31)
    layers = [m for m in model.fusion.modules() if isinstance(m, torch.nn.Linear)]
    assert layers
    for layer in layers:
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    torch.manual_seed(0)
    default = build_av_model(tiny_config(fusion=fusion, encoder_width=64, linear_init="pytorch"), 31)
    assert all(torch.count_nonzero(m.bias) > 0 for m in default.fusion.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("fusion_cls", [FiLMFusion, GatedFusion])
def test_film_and_gated_do_not_decompose(fusion_cls):
    out = fusion_cls(3, 2, 4)(torch.randn(5, 3), torch.randn(5, 2))
    assert out.logits.shape == (5, 4)
    assert out.logits_a is None and out.logits_v is None and not fusion_cls.decomposes


def test_film_uses_audio_to_scale_and_shift_visual():
    fusion = FiLMFusion(3, 2, 4)
    f_a, f_v = torch.randn(5, 3), torch.randn(5, 2)
    gamma, beta = fusion.film(f_a).chunk(2, dim=-1)
    torch.testing.assert_close(fusion(f_a, f_v).logits, fusion.fc(gamma * f_v + beta))


def test_visual_encoder_folds_frames_and_averages_them():
    encoder = Encoder(SmallCNN(3, 4)).eval()
    clip = torch.randn(2, 3, 3, 12, 12)
    per_frame = torch.stack([encoder(clip[:, t:t + 1]) for t in range(3)], 1)
    torch.testing.assert_close(encoder(clip), per_frame.mean(1), rtol=1e-5, atol=1e-6)
    spatial_mean = encoder.backbone.forward_map(clip[:, 0]).mean(dim=(2, 3))
    torch.testing.assert_close(encoder(clip[:, :1]), spatial_mean)
    spatial_mean = encoder.backbone.forward_map(clip[:, 0]).mean(dim=(2, 3))
    torch.testing.assert_close(encoder(clip[:, :1]), spatial_mean)


def test_resnet18_encoders_give_512_features_with_a_one_channel_audio_stem():
    audio = Encoder(ResNet18(1)).eval()
    visual = Encoder(ResNet18(3)).eval()
    assert audio.backbone.body[0].in_channels == 1
    assert audio(torch.randn(2, 1, 64, 48)).shape == (2, 512)
    assert visual(torch.randn(2, 2, 3, 32, 32)).shape == (2, 512)


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    plain = build_av_model(tiny_config(), 6).eval()
    torch.manual_seed(0)
    fast = build_av_model(tiny_config(channels_last=True), 6).eval()
    audio, visual = torch.randn(2, 1, 12, 12), torch.randn(2, 1, 3, 12, 12)
    torch.testing.assert_close(plain(audio, visual).logits, fast(audio, visual).logits,
                               rtol=1e-4, atol=1e-5)


def test_unimodal_head_gets_the_lineage_init():
    """OGM-GE utils/utils.py ~15-19: xavier-normal weights, zero bias on the linear classifier too."""
    from .conftest import train_steps

    _, model, _ = train_steps(tiny_config("unimodal", encoder_width=64), 0)
    assert torch.count_nonzero(model.head.bias) == 0
    fan_out, fan_in = model.head.weight.shape
    assert model.head.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.3)

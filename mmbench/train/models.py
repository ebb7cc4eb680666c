"""Encoders, fusion heads and the audio-visual model every method starts from.

Shapes: audio (B, 1, F, T); visual (B, T, 3, H, W) — frames are folded into the batch,
encoded by a 2-D network and averaged over time and space. Pooling is a plain mean
(not adaptive pooling) because its CUDA backward is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.config import RunConfig


@dataclass
class Outputs:
    """What a forward pass gives every method and metric, under the same names.

    `logits_a`/`logits_v` are per-modality logits (concat: they add up to `logits`; sum: in training,
    see SumFusion; late-fusion methods weight them); None where the fusion does not decompose. `keep` marks
    the samples of the batch the outputs refer to, when a forward pass removed some (OPM).
    """

    logits: torch.Tensor
    logits_a: torch.Tensor | None = None
    logits_v: torch.Tensor | None = None
    feat_a: torch.Tensor | None = None
    feat_v: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """The labels that line up with these outputs."""
        return y if self.keep is None else y[self.keep]


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks, stride 2 from the second on: for CPU-scale runs."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        widths = [width, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        channels = in_channels
        for i, out in enumerate(widths):
            layers += [nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.out_dim = channels
        self.stage_widths = tuple(widths)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> list[nn.Module]:
        """The four conv blocks, in order (their composition is `forward_map`)."""
        return [self.body[i:i + 3] for i in range(0, len(self.body), 3)]


class ResNet18(nn.Module):
    """torchvision ResNet-18 from scratch, with an `in_channels` stem and no classifier."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        import torchvision  # 2 s to import; the small CNN of the synthetic runs does without it

        net = torchvision.models.resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                  net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_dim = 512
        self.stage_widths = (64, 128, 256, 512)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> list[nn.Module]:
        """The stem with layer1, then layer2, layer3 and layer4 (their composition is `forward_map`)."""
        return [self.body[:5], self.body[5], self.body[6], self.body[7]]


class Encoder(nn.Module):
    """A 2-D backbone mean-pooled to a feature vector. Audio (B, 1, F, T) passes as it is;
    visual (B, T, 3, H, W) has its frames folded into the batch and averaged afterwards."""

    def __init__(self, backbone: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = backbone.out_dim
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images, frames = self.fold(x)
        return self.pool(self.backbone.forward_map(images), frames)

    def fold(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(a batch of images, frames per sample): visual frames folded into the batch."""
        frames = x.shape[1] if x.ndim == 5 else 1
        return x.flatten(0, x.ndim - 4).contiguous(memory_format=self.memory_format), frames

    @staticmethod
    def pool(fmap: torch.Tensor, frames: int) -> torch.Tensor:
        """Per-sample features: the feature maps' mean over each sample's frames and positions."""
        return fmap.unflatten(0, (-1, frames)).mean(dim=(1, 3, 4))

    def stages(self) -> list[nn.Module]:
        """The backbone's stages in order (`backbone.stage_widths` channels out), for a model that runs the
        encoder stage by stage, e.g. with fusion blocks between stages: fold, the stages, pool."""
        return self.backbone.stages()

    def record_pass(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """For a model that ran this encoder stage by stage instead of calling it: run its forward hooks on
        (`x`, `features`) as a call does (the cost counter, an epoch plan's feature masks) and return the
        features they leave."""
        for hook in self._forward_hooks.values():
            result = hook(self, (x,), features)
            features = features if result is None else result
        return features


def build_encoder(kind: str, in_channels: int, width: int) -> nn.Module:
    if kind == "resnet18":
        return ResNet18(in_channels)
    if kind == "small_cnn":
        return SmallCNN(in_channels, width)
    raise ValueError(f"unknown encoder {kind!r}")


class ConcatFusion(nn.Module):
    """One linear layer on [f_a ; f_v]; each modality's logits use its half of W and b/2."""

    decomposes = True

    def __init__(self, dim_a: int, dim_v: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim_a + dim_v, num_classes)
        self.dim_a = dim_a

    def decision_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc.weight[:, : self.dim_a].detach(), self.fc.weight[:, self.dim_a:].detach()

    def forward(self, feat_a: torch.Tensor, feat_v: torch.Tensor) -> Outputs:
        w_a, w_v = self.fc.weight[:, : self.dim_a], self.fc.weight[:, self.dim_a:]
        half_bias = self.fc.bias / 2
        logits_a = F.linear(feat_a, w_a, half_bias)
        logits_v = F.linear(feat_v, w_v, half_bias)
        return Outputs(logits_a + logits_v, logits_a, logits_v, feat_a, feat_v)


class SumFusion(nn.Module):
    """A linear head per modality, logits summed. Per-modality logits follow the OGM-GE code: each
    head's full bias in training (the scores OGM compares, `main.py` ~82-86), half of it in evaluation
    (`valid()`, `main.py` ~194-198), which only moves the per-modality columns (acc_head_*, rho)."""

    decomposes = True

    def __init__(self, dim_a: int, dim_v: int, num_classes: int) -> None:
        super().__init__()
        self.fc_a = nn.Linear(dim_a, num_classes)
        self.fc_v = nn.Linear(dim_v, num_classes)

    def decision_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc_a.weight.detach(), self.fc_v.weight.detach()

    def forward(self, feat_a: torch.Tensor, feat_v: torch.Tensor) -> Outputs:
        logits_a, logits_v = self.fc_a(feat_a), self.fc_v(feat_v)
        fused = logits_a + logits_v
        if not self.training:
            logits_a, logits_v = logits_a - self.fc_a.bias / 2, logits_v - self.fc_v.bias / 2
        return Outputs(fused, logits_a, logits_v, feat_a, feat_v)


class FiLMFusion(nn.Module):
    """Audio features produce a scale and shift for the visual features (OGM-GE's FiLM)."""

    decomposes = False

    def __init__(self, dim_a: int, dim_v: int, num_classes: int) -> None:
        super().__init__()
        self.film = nn.Linear(dim_a, 2 * dim_v)
        self.fc = nn.Linear(dim_v, num_classes)

    def forward(self, feat_a: torch.Tensor, feat_v: torch.Tensor) -> Outputs:
        gamma, beta = self.film(feat_a).chunk(2, dim=-1)
        return Outputs(self.fc(gamma * feat_v + beta), feat_a=feat_a, feat_v=feat_v)


class GatedFusion(nn.Module):
    """sigmoid(fc_a(f_a)) gates fc_v(f_v) before the classifier (OGM-GE's gated fusion)."""

    decomposes = False

    def __init__(self, dim_a: int, dim_v: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.fc_a = nn.Linear(dim_a, hidden)
        self.fc_v = nn.Linear(dim_v, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, feat_a: torch.Tensor, feat_v: torch.Tensor) -> Outputs:
        gated = torch.sigmoid(self.fc_a(feat_a)) * self.fc_v(feat_v)
        return Outputs(self.fc(gated), feat_a=feat_a, feat_v=feat_v)


def init_linear(module: nn.Module, scheme: str) -> nn.Module:
    """Initialise every Linear layer of `module` by `scheme` (the core key `linear_init`):
    xavier: xavier-normal weights and zero bias, the `weight_init` that every script of the OGM-GE
    lineage and AUG applies (OGM-GE `utils/utils.py` ~15-19, AUG `utils/utils.py` ~81-89);
    pytorch: PyTorch's own default, left as it is. Draws from the global generator."""
    if scheme == "xavier":
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    elif scheme != "pytorch":
        raise ValueError(f"unknown linear_init {scheme!r}")
    return module


FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion, "sum": SumFusion, "film": FiLMFusion, "gated": GatedFusion,
}


class AVModel(nn.Module):
    def __init__(self, audio_encoder: nn.Module, visual_encoder: nn.Module, fusion: nn.Module) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.visual_encoder = visual_encoder
        self.fusion = fusion

    def decision_weights(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W_a, W_v) of a linear decision layer that splits by modality, else None."""
        return self.fusion.decision_weights() if hasattr(self.fusion, "decision_weights") else None

    def encode(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_encoder(audio), self.visual_encoder(visual)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> Outputs:
        return self.fusion(*self.encode(audio, visual))


def build_av_model(cfg: RunConfig, num_classes: int, channels_last: bool | None = None) -> AVModel:
    """The default model: two encoders of `cfg.encoder` and the `cfg.fusion` head, in channels-last
    memory format when `channels_last` (default: `cfg.channels_last` is true)."""
    channels_last = cfg.channels_last is True if channels_last is None else channels_last
    audio = Encoder(build_encoder(cfg.encoder, 1, cfg.encoder_width), channels_last)
    visual = Encoder(build_encoder(cfg.encoder, 3, cfg.encoder_width), channels_last)
    fusion = init_linear(FUSIONS[cfg.fusion](audio.out_dim, visual.out_dim, num_classes), cfg.linear_init)
    model = AVModel(audio, visual, fusion)
    return model.to(memory_format=torch.channels_last) if channels_last else model

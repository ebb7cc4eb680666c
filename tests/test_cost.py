"""Training cost per run (mmbench/train/cost.py): encoder passes counted while training, FLOPs from the meta device."""

import pytest
import torch
import torch.nn.functional as F

from mmbench.method import MODALITY_LOGITS, Method
from mmbench.registry import METHODS
from mmbench.train import engine
from mmbench.train.cost import encoder_flops
from mmbench.train.models import Encoder, ResNet18, SmallCNN
from tests.conftest import tiny_config


def _conv_flops(c_in: int, c_out: int, size_out: int) -> int:
    return 2 * c_in * c_out * 9 * size_out * size_out  # a 3x3 convolution: one multiply-add = 2 FLOPs


def test_encoder_flops_are_the_hand_counts_of_its_convolutions():
    # SmallCNN(width 4) on one 1x8x8 input: 4 convs 1->4 (8x8), 4->4 (4x4), 4->8 (2x2), 8->16 (1x1).
    convs = [(1, 4, 8), (4, 4, 4), (4, 8, 2), (8, 16, 1)]
    forward = sum(_conv_flops(*c) for c in convs)
    forward_flops, backward_flops = encoder_flops(Encoder(SmallCNN(1, width=4)), (1, 8, 8))
    assert forward_flops == forward == 2 * 9 * (1 * 4 * 64 + 4 * 4 * 16 + 4 * 8 * 4 + 8 * 16)
    # backward: the weight gradient of every conv (= its forward) and the input gradient of all but the first
    assert backward_flops == 2 * forward - _conv_flops(*convs[0])


class _GroupedThenLinear(torch.nn.Module):
    """A grouped convolution, then a linear layer over the channels of each position."""

    out_dim = 5

    def __init__(self):
        super().__init__()
        self.conv, self.linear = torch.nn.Conv2d(4, 8, 3, groups=2), torch.nn.Linear(8, 5)

    def forward_map(self, x):
        return self.linear(self.conv(x).movedim(1, -1)).movedim(-1, 1)


class _MatrixLayer(torch.nn.Module):
    """A parametrised layer the analytic count does not know: x @ w over the channels."""

    out_dim = 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, 4))

    def forward_map(self, x):
        return (x.movedim(1, -1) @ self.w).movedim(-1, 1)


@pytest.mark.parametrize("backbone, shape", [
    (lambda: SmallCNN(1, width=8), (1, 24, 24)),
    (lambda: ResNet18(1), (1, 64, 40)),
    (lambda: ResNet18(3), (2, 3, 32, 32)),  # visual: frames folded into the batch
    (lambda: _GroupedThenLinear(), (4, 6, 6)),
])
def test_the_analytic_count_equals_torchs_flop_counter(backbone, shape):
    """The count by layer shapes equals torch.utils.flop_counter's on the meta device (which imports torch's
    compiler, ~1.5 s per run process), forwards and backwards, grouped convolutions and linear layers too."""
    from mmbench.train.cost import _torch_counted_flops

    encoder = Encoder(backbone())
    meta = Encoder(encoder.backbone).to("meta").eval()
    assert encoder_flops(encoder, shape) == _torch_counted_flops(meta, torch.zeros(1, *shape, device="meta"))


def test_an_encoder_with_other_parametrised_layers_is_counted_by_torch():
    forward, backward = encoder_flops(Encoder(_MatrixLayer()), (4, 1, 1))
    assert (forward, backward) == (2 * 4 * 4, 2 * 4 * 4)  # x @ w, then only dL/dw (x needs no gradient)


def test_a_joint_run_counts_one_pass_each_way_per_sample_and_unimodal_none_for_the_other_encoder(tmp_path):
    joint = engine.run(tiny_config("joint", epochs=2, drop_last=True), tmp_path)
    assert [joint[f"cost_{k}"] for k in ("fwd_a", "fwd_v", "bwd_a", "bwd_v")] == [1.0, 1.0, 1.0, 1.0]
    audio = engine.run(tiny_config("unimodal", epochs=1), tmp_path)
    assert [audio[f"cost_{k}"] for k in ("fwd_a", "fwd_v", "bwd_a", "bwd_v")] == [1.0, 0.0, 1.0, 0.0]
    # the train FLOPs are the encoders' forward and backward FLOPs per sample, weighted by the passes
    dataset = engine.DATASETS.get("synthetic")(tiny_config("joint"))
    batch = next(dataset.load().train.batches(1))
    flops_a = encoder_flops(Encoder(SmallCNN(1, width=tiny_config().encoder_width)), tuple(batch.audio.shape[1:]))
    assert audio["train_gflops_per_sample"] == pytest.approx(sum(flops_a) / 1e9)
    assert joint["train_gflops_per_sample"] > audio["train_gflops_per_sample"]
    assert joint["modality_logits"] == "fusion-slice" and audio["modality_logits"] == "single-modality"


class _TwoLookMethod(Method):
    """A forward without gradients before the training forward, and the visual loss backpropagated twice."""

    name = "two-look"

    def train_step(self, model, batch, optimizer, ctx):
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model(batch.audio, batch.visual)
        out = model(batch.audio, batch.visual)
        F.cross_entropy(out.logits_v, batch.y).backward(retain_graph=True)
        loss = F.cross_entropy(out.logits, batch.y)
        loss.backward()
        optimizer.step()
        return out, loss


def test_extra_forwards_and_backwards_are_counted_and_evaluation_is_not(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._items, "two-look", _TwoLookMethod)
    row = engine.run(tiny_config("two-look", epochs=2), tmp_path)
    assert (row["cost_fwd_a"], row["cost_fwd_v"], row["cost_bwd_a"], row["cost_bwd_v"]) == (2.0, 2.0, 1.0, 2.0)
    # the default (fusion head) meaning of the per-modality logits, for a method that names none
    assert row["modality_logits"] == "fusion-slice"
    assert Method.logits_kind(tiny_config("joint", fusion="film")) == "none"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_says_what_its_per_modality_logits_are(name):
    assert METHODS.get(name).logits_kind(tiny_config(name)) in MODALITY_LOGITS

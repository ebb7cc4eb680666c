"""Greedy (Wu et al., ICML 2022) against the official code, nyukat/greedy_multimodal_learning @a190e03: the MMTM
gates by hand (`src/balanced_mmtm.py` lines 93-111), its running averages and curated gates (lines 113-152), the
BDR and the curation window (`src/callbacks.py` lines 199-263: METHODS2 §9.4's values), the parameter groups
(lines 203-228), the stage-by-stage encoders (`src/model.py` lines 63-108), then the effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.methods.greedy import MMTM, balancing_step, bdr_difference, gradient_weight_ratios, parameter_groups
from mmbench.results import read_epochs, read_runs
from mmbench.train.models import Encoder, ResNet18, SmallCNN

from .conftest import assert_resumes_identical, first_batch_setup


@pytest.mark.parametrize("backbone", [SmallCNN(3, 4), ResNet18(3)])
def test_an_encoders_stages_compose_to_its_forward_map(backbone):
    backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    y = x
    for stage, width in zip(backbone.stages(), backbone.stage_widths, strict=True):
        y = stage(y)
        assert y.shape[1] == width
    torch.testing.assert_close(y, backbone.forward_map(x))


def test_a_stagewise_pass_runs_the_encoders_hooks_as_a_call_does():
    encoder = Encoder(SmallCNN(1, 4))
    seen = []
    encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape) or out * 0)  # a feature mask
    x = torch.randn(2, 1, 8, 8)
    images, frames = encoder.fold(x)
    for stage in encoder.stages():
        images = stage(images)
    features = encoder.record_pass(x, encoder.pool(images, frames))
    assert torch.equal(features, torch.zeros(2, 16)) and torch.equal(encoder(x), features)
    assert seen == [x.shape, x.shape]  # the cost counter's view: the input as a call passes it


def test_mmtm_gates_by_hand():
    mmtm = MMTM(1, 2, ratio=3)  # hidden int(2 * 3 / 3) = 2
    with torch.no_grad():
        mmtm.fc_squeeze.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]))
        mmtm.fc_squeeze.bias.zero_()
        mmtm.fc_a.weight.copy_(torch.tensor([[1.0, 1.0]]))
        mmtm.fc_a.bias.zero_()
        mmtm.fc_v.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
        mmtm.fc_v.bias.copy_(torch.tensor([0.0, 1.0]))
    map_a = torch.full((1, 1, 2, 2), 0.5)  # q_a = 0.5
    # visual: two frames of one sample, channel 0 means 1.0 and 3.0 (q 2.0), channel 1 means 0 and 1 (q 0.5)
    map_v = torch.stack([torch.stack([torch.full((2, 2), 1.0), torch.zeros(2, 2)]),
                         torch.stack([torch.full((2, 2), 3.0), torch.ones(2, 2)])])
    # squeeze (0.5, 2.0, 0.5): e = ReLU(0.5, 1.5) = (0.5, 1.5); g_a = sigmoid(2.0); g_v = sigmoid(1.0, -0.5)
    out_a, out_v = mmtm(map_a, map_v, 1, 2)
    torch.testing.assert_close(out_a, map_a * (1 / (1 + math.exp(-2.0))))
    gate_v = torch.tensor([1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(0.5))])
    torch.testing.assert_close(out_v, map_v * gate_v[None, :, None, None])  # the same gate on both frames
    assert mmtm.steps.item() == 0  # no curation given (evaluation): the averages stay


def test_running_averages_and_curated_gates():
    torch.manual_seed(0)
    mmtm = MMTM(3, 3)
    maps = [(torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)) for _ in range(3)]
    off, care_v = (torch.tensor(False), torch.tensor(0)), (torch.tensor(True), torch.tensor(1))
    gates = [mmtm.gates(a, v, 1, 1) for a, v in maps]
    for a, v in maps[:2]:
        mmtm(a, v, 1, 1, off)
    out_a, out_v = mmtm(*maps[2], 1, 1, care_v)
    # the average over the three training forwards, this one included (lines 113-116)
    average_v = torch.stack([g[1].mean(0) for g in gates]).mean(0)
    torch.testing.assert_close(mmtm.average_v, average_v)
    torch.testing.assert_close(out_v, maps[2][1] * average_v[None, :, None, None])  # visual cared for: frozen
    torch.testing.assert_close(out_a, maps[2][0] * gates[2][0][:, :, None, None])  # audio as usual
    shared = MMTM(3, 3)
    shared.load_state_dict({k: v for k, v in mmtm.state_dict().items() if "average" not in k and k != "steps"},
                           strict=False)
    shared(*maps[0], 1, 1, off, shared_average=True)
    torch.testing.assert_close(shared.average_v, gates[0][0].mean(0))  # the release's second average


def test_bdr_and_the_curation_window():
    # METHODS2 §9.4: M^bypass = (2, 1), M^main = (1, 1): BDR = (0.30103, 0), d = 0.30103 > 0.01: care for audio
    assert bdr_difference(torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64)).item() == pytest.approx(0.30103,
                                                                                                       abs=1e-5)
    state = {"accumulated": torch.zeros(4, dtype=torch.float64), "d": torch.zeros((), dtype=torch.float64),
             "curating": torch.tensor(False), "cared": torch.tensor(0), "step": torch.tensor(0)}
    ratios = torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    locked = balancing_step(state, ratios, False, 0.01, 5)
    assert not locked["curating"] and locked["accumulated"].tolist() == [2.0, 1.0, 1.0, 1.0]
    state = balancing_step(locked, ratios, True, 0.01, 5)
    assert state["curating"] and state["cared"] == 0 and state["accumulated"].tolist() == [4.0, 2.0, 2.0, 2.0]
    curated = 0
    while state["curating"]:  # five curated steps, the accumulators paused
        curated += 1
        state = balancing_step(state, ratios * 100, True, 0.01, 5)
        assert state["accumulated"].tolist() == [4.0, 2.0, 2.0, 2.0]
    assert curated == 5
    # visual's bypass relatively faster: d < 0, care for visual
    state = balancing_step(state, torch.tensor([0.0, 10.0, 1.0, 1.0], dtype=torch.float64), True, 0.01, 5)
    assert state["curating"] and state["cared"] == 1
    calm = {**state, "curating": torch.tensor(False), "accumulated": torch.ones(4, dtype=torch.float64)}
    calm = balancing_step(calm, torch.ones(4, dtype=torch.float64), True, 0.01, 5)  # d = 0: no window
    assert not calm["curating"] and calm["d"] == 0


def _setup(**overrides):
    return first_batch_setup("greedy", **overrides)


def test_the_groups_and_their_gradient_to_weight_ratios():
    batch, ctx, model = _setup()
    groups = parameter_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups["bypass_a"] if "fc_squeeze" in names[id(p)]) == sorted(
        names[id(p)] for p in groups["bypass_v"] if "fc_squeeze" in names[id(p)])  # shared by both
    assert not any(".fc_v." in names[id(p)] for p in groups["bypass_a"])
    assert {names[id(p)].split(".")[0] for p in groups["main_v"]} == {"visual_encoder", "head_v"}
    assert len(model.mmtm) == 3  # after stages 2, 3 and 4
    out = ctx.method.forward(model, batch, ctx)
    ctx.method.loss(out, batch, ctx).backward()
    main_a = groups["main_a"]
    want = sum(p.grad.double().pow(2).sum() for p in main_a) / sum(p.double().pow(2).sum() for p in main_a)
    assert gradient_weight_ratios(groups)[2].item() == pytest.approx(want.item(), rel=1e-12)


def test_the_loss_is_both_classifiers_ce_and_the_prediction_their_mean():
    batch, ctx, model = _setup()
    out = ctx.method.forward(model, batch, ctx)
    torch.testing.assert_close(out.logits, (out.logits_a + out.logits_v) / 2)
    torch.testing.assert_close(ctx.method.loss(out, batch, ctx),
                               F.cross_entropy(out.logits_a, batch.y) + F.cross_entropy(out.logits_v, batch.y))


def test_without_gating_the_stagewise_branches_are_the_encoders(monkeypatch):
    batch, ctx, model = _setup(frames=2)
    for block in model.mmtm.values():
        monkeypatch.setattr(block, "gates", lambda a, v, fa, fv: (torch.ones(len(a) // fa, a.shape[1]),
                                                                  torch.ones(len(v) // fv, v.shape[1])))
    model.eval()
    out = model(batch.audio, batch.visual)
    torch.testing.assert_close(out.feat_a, model.audio_encoder(batch.audio))
    torch.testing.assert_close(out.feat_v, model.visual_encoder(batch.visual))
    assert isinstance(model.visual_encoder, Encoder) and batch.visual.ndim == 5


def test_greedy_counts_its_encoder_passes_and_resumes_after_a_kill_identical(tmp_path):
    assert_resumes_identical("greedy", tmp_path, epochs=3, stop_after=1)
    run = read_runs(tmp_path / "full").iloc[0]  # the stage-by-stage encoders still count as one pass each
    assert run["cost_fwd_a"] == pytest.approx(1.0) and run["cost_bwd_v"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0])
def test_greedy_curates_on_the_imbalanced_dataset(synthetic_run, seed):
    """From the second epoch on the rule opens curation windows; with a classifier and a CE per branch the visual
    branch learns (benchmarks/imbalance_effect.py, 5 seeds: +38.2 pp visual, +2.7 pp fused against joint)."""
    run = synthetic_run("greedy", seed)
    epochs = read_epochs(synthetic_run.out).set_index("run_id").loc[[run["run_id"]]]
    assert epochs["diag_greedy_curating"].iloc[0] == 0  # locked in epoch 0
    assert (epochs["diag_greedy_curating"].iloc[1:] > 0).any()
    assert run["final_acc_head_v"] > synthetic_run("joint", seed)["final_acc_head_v"] + 0.1

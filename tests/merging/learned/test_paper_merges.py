"""The papers' learned merges against their definitions on small constructed cases."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.distance import jensenshannon
from torch import nn

from manytask.merging.learned import (
    atlas,
    cold_fusion,
    concrete_mask,
    concrete_task_arithmetic,
    divmerge,
    fw_merging,
    js_divergence,
    stf_merge,
)
from manytask.merging.learned.stf import feature_directions


def encoder_and_experts(k: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    experts = []
    for _ in range(k):
        sd = {n: p.detach() + 0.5 * torch.randn_like(p) for n, p in enc.named_parameters()}
        experts.append(sd)
    heads = [nn.Linear(5, 3) for _ in range(k)]
    for h in heads:
        h.requires_grad_(False)
    return enc, experts, heads


def labelled_by(enc, state, head, n=64, seed=0):
    """Inputs labelled by the argmax of a given model: the task an expert solves exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    with torch.no_grad():
        y = head(torch.func.functional_call(enc, state, (x,))).argmax(-1)
    return [(x, y)]


def flat_params(enc, state):
    return torch.cat([state[n].reshape(-1) for n, _ in enc.named_parameters()])


def test_atlas_zero_steps_is_its_initial_composition_and_blocks_share_a_coefficient() -> None:
    enc, experts, heads = encoder_and_experts(2)
    data = [labelled_by(enc, experts[i], heads[i]) for i in range(2)]
    res = atlas(enc, experts, heads, data, steps=0, init=0.0)
    for n, p in enc.named_parameters():
        assert torch.equal(res.state_dict[n], p.detach())
    blocks = {"0.weight": "first", "0.bias": "first"}
    res = atlas(enc, experts, heads, data, steps=3, blocks=blocks)
    assert res.coefficients.shape == (2, 3)           # first, 2.weight, 2.bias
    assert res.block_names[0] == "first"
    # the composition is theta_0 + sum_k sum_b lambda_kb tau_kb, block by block
    c = res.coefficients.double()
    w = enc[0].weight.detach().double()
    expect = w + sum(c[k, 0] * (experts[k]["0.weight"].double() - w) for k in range(2))
    torch.testing.assert_close(res.state_dict["0.weight"].double(), expect, atol=1e-6, rtol=0)


def test_atlas_learns_the_expert_a_task_needs() -> None:
    enc, experts, heads = encoder_and_experts(2)
    data = [labelled_by(enc, experts[0], heads[0])]
    res = atlas(enc, experts, [heads[0], heads[0]], [data[0], data[0]], steps=150, lr=0.05)
    assert res.losses[-1] < 0.5 * res.losses[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_js_divergence_matches_scipy(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g,
                                                                              dtype=torch.float64)
    expect = sum(jensenshannon(p, q) ** 2 for p, q in zip(a.softmax(-1).numpy(),
                                                          b.softmax(-1).numpy(), strict=True)) / 5
    assert float(js_divergence(a, b)) == pytest.approx(expect, rel=1e-9)
    assert float(js_divergence(a, a)) == pytest.approx(0.0, abs=1e-12)
    assert float(js_divergence(a, b)) <= math.log(2) + 1e-12


def test_divmerge_lowers_the_divergence_to_the_experts() -> None:
    enc, experts, heads = encoder_and_experts(3)
    loaders = [[torch.randn(32, 6)] for _ in range(3)]
    res = divmerge(enc, experts, heads, loaders, steps=60, lr=0.05)
    assert res.coefficients.shape == (3,)
    assert res.divergence[-1] < res.divergence[0]
    # with one coefficient per task the result is task arithmetic with those coefficients
    c = res.coefficients.double()
    w = enc[2].bias.detach().double()
    expect = w + sum(c[k] * (experts[k]["2.bias"].double() - w) for k in range(3))
    torch.testing.assert_close(res.state_dict["2.bias"].double(), expect, atol=1e-6, rtol=0)


def test_fw_merging_stays_in_the_hull_and_picks_the_relevant_checkpoint() -> None:
    enc, experts, heads = encoder_and_experts(4, seed=3)
    data = [labelled_by(enc, experts[2], heads[0], n=128)]
    res = fw_merging(enc, experts, heads[:1], data, iterations=12)
    w = res.weights
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    merged = flat_params(enc, res.state_dict).double()
    base = flat_params(enc, dict(enc.named_parameters())).double()
    taus = torch.stack([flat_params(enc, e).double() - base for e in experts])
    torch.testing.assert_close(merged, base + w.double() @ taus, atol=1e-5, rtol=0)
    assert int(w.argmax()) == 2


def test_cold_fusion_round_is_the_average_of_the_contributors() -> None:
    model = nn.Linear(3, 2)
    targets = [torch.full((2, 3), float(v)) for v in (1.0, 2.0, 6.0)]

    def to_target(t):
        def finetune(m: nn.Module) -> None:
            with torch.no_grad():
                m.weight.copy_(t)
        return finetune

    res = cold_fusion(model, [to_target(t) for t in targets], rounds=2)
    torch.testing.assert_close(res.model.weight, torch.full((2, 3), 3.0))
    assert res.moved[1] == pytest.approx(0.0, abs=1e-9)   # a fixed point after one round
    assert not torch.equal(model.weight, res.model.weight)  # the input model is untouched


def test_cold_fusion_converges_to_the_joint_optimum_on_quadratics() -> None:
    # contributor c takes one gradient step on 1/2 ||w - a_c||^2: averaging the steps is a
    # gradient step on the summed objective, whose minimum is the mean of the a_c
    anchors = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 5.0])]
    model = nn.Linear(2, 1, bias=False)

    def step_towards(a):
        def finetune(m):
            with torch.no_grad():
                m.weight -= 0.5 * (m.weight - a)
        return finetune

    res = cold_fusion(model, [step_towards(a) for a in anchors], rounds=40)
    torch.testing.assert_close(res.model.weight[0], torch.stack(anchors).mean(0), atol=1e-6,
                               rtol=0)


def test_stf_reproduces_each_models_features_on_orthogonal_directions() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(4, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    dirs = [q[:, :2], q[:, 2:4]]             # each task changes the layer on its own directions
    deltas = [torch.randn(4, 2, dtype=torch.float64) @ d.T for d in dirs]
    models = [{"w": w0 + d, "b": torch.full((4,), float(i))} for i, d in enumerate(deltas)]
    merged = stf_merge({"w": w0, "b": torch.zeros(4)}, models)
    for m, d in zip(models, dirs, strict=True):
        torch.testing.assert_close(merged["w"] @ d, m["w"] @ d, atol=1e-9, rtol=0)
    untouched = q[:, 4:]
    torch.testing.assert_close(merged["w"] @ untouched, w0 @ untouched, atol=1e-9, rtol=0)
    torch.testing.assert_close(merged["b"], torch.full((4,), 0.5))  # task-vector mean


def test_stf_with_calibration_inputs_solves_the_least_squares_system() -> None:
    torch.manual_seed(1)
    w0 = torch.randn(3, 5, dtype=torch.float64)
    models = [{"w": w0 + torch.randn(3, 5, dtype=torch.float64)} for _ in range(2)]
    calib = {"w": [torch.randn(5, 2, dtype=torch.float64) for _ in range(2)]}
    merged = stf_merge({"w": w0}, models, calibration=calib)["w"]
    for m, x in zip(models, calib["w"], strict=True):   # 4 constraints on 5 inputs: exact
        torch.testing.assert_close(merged @ x, m["w"] @ x, atol=1e-9, rtol=0)


def test_feature_directions_hold_the_asked_energy() -> None:
    delta = torch.diag(torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64))
    assert feature_directions(delta, 0.85).shape == (3, 1)   # 9 / 10.01 = 0.899
    assert feature_directions(delta, 0.995).shape == (3, 2)  # 10 / 10.01 = 0.999
    assert feature_directions(delta, 1.0).shape == (3, 3)
    assert feature_directions(torch.zeros(3, 3), 0.9).shape == (3, 0)


def test_fw_merging_cosine_selection_stays_in_the_hull() -> None:
    enc, experts, heads = encoder_and_experts(3, seed=4)
    data = [labelled_by(enc, experts[1], heads[0], n=64)]
    res = fw_merging(enc, experts, heads[:1], data, iterations=5, selection="cosine")
    assert bool((res.weights >= 0).all()) and float(res.weights.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="selection must be"):
        fw_merging(enc, experts, heads[:1], data, selection="best")


def test_concrete_mask_is_a_relaxed_bernoulli_of_sigmoid_logits() -> None:
    logits = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    sample = concrete_mask(logits, 0.05, gen)
    assert bool(((sample >= 0) & (sample <= 1)).all())
    frequency = (sample > 0.5).double().mean(0)
    torch.testing.assert_close(frequency, torch.sigmoid(logits[0]), atol=0.015, rtol=0)


def test_concrete_task_arithmetic_without_steps_is_task_arithmetic_and_learning_lowers_entropy(
) -> None:
    enc, experts, heads = encoder_and_experts(2, seed=5)
    loaders = [[torch.randn(32, 6)] for _ in range(2)]
    res = concrete_task_arithmetic(enc, experts, heads, loaders, steps=0, scale=0.3)
    assert bool((res.mask == 1).all())
    w = enc[0].weight.detach()
    expect = w + 0.3 * sum(e["0.weight"] - w for e in experts)
    torch.testing.assert_close(res.state_dict["0.weight"], expect)
    res = concrete_task_arithmetic(enc, experts, heads, loaders, steps=60, init_logit=0.5)
    assert set(res.mask.unique().tolist()) <= {0.0, 1.0}
    assert sum(res.entropy[-10:]) < sum(res.entropy[:10])

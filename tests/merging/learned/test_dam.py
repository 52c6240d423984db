"""DAM (defence-aware merging) against its definition on a small encoder (learned/dam.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from manytask.merging.learned import dam
from manytask.merging.learned.concrete import concrete_mask
from tests.merging.learned.test_paper_merges import encoder_and_experts


def batches(k: int, n: int = 3, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(8, 6, generator=g) for _ in range(n)] for _ in range(k)]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(-1)
    return -(p * p.log()).sum(-1).mean()


def test_an_all_ones_mask_without_learning_is_task_arithmetic() -> None:
    enc, experts, heads = encoder_and_experts(2)
    res = dam(enc, experts, heads, batches(2), steps=0, adamerging_steps=0,
              init_logit=50.0, eval_mask="discrete", init=0.3)
    for n, p in enc.named_parameters():
        expected = p.detach() + 0.3 * sum(sd[n] - p.detach() for sd in experts)
        torch.testing.assert_close(res.state_dict[n], expected)


def test_the_mask_is_rescaled_to_mean_one_in_every_tensor() -> None:
    enc, experts, heads = encoder_and_experts(2)
    res = dam(enc, experts, heads, batches(2), steps=0, adamerging_steps=0, init=0.5)
    start = 0
    for n, p in enc.named_parameters():
        m = res.mask[start:start + p.numel()].view(p.shape)
        start += p.numel()
        assert float(m.mean()) == pytest.approx(1.0)
        summed = sum(sd[n] - p.detach() for sd in experts)
        torch.testing.assert_close(res.state_dict[n], p.detach() + 0.5 * m * summed)


def test_one_meta_step_follows_the_definition() -> None:
    """Inner step, trigger step and mask step, written here from the module's equations:
    each first Adam step moves its variable by -lr sign(gradient)."""
    k = 2
    enc, experts, heads = encoder_and_experts(k)
    data = batches(k)
    lr, base_lr, adv_lr, adv_weight, temp = 1e-2, 0.5, 1e-2, 0.7, 0.5
    res = dam(enc, experts, heads, data, granularity="task", steps=1, adamerging_steps=0,
              lr=lr, base_lr=base_lr, adv_lr=adv_lr, adv_weight=adv_weight, temperature=temp,
              init=0.3, seed=5)
    names = [n for n, _ in enc.named_parameters()]
    base = {n: p.detach() for n, p in enc.named_parameters()}
    taus = [{n: sd[n] - base[n] for n in names} for sd in experts]
    logits = {n: torch.zeros_like(base[n], requires_grad=True) for n in names}
    gen = torch.Generator().manual_seed(5)
    flat_logits = torch.cat([logits[n].reshape(-1) for n in names])
    sample = concrete_mask(flat_logits, temp, gen)
    mask, start = {}, 0
    for n in names:
        m = sample[start:start + base[n].numel()].view(base[n].shape)
        start += base[n].numel()
        mask[n] = m / m.mean()

    def params(w, msk):
        return {n: base[n] + sum(w[j] * msk[n] * taus[j][n] for j in range(k)) for n in names}

    def out(t, w, msk, x):
        return heads[t](functional_call(enc, params(w, msk), (x,)))

    w = torch.full((k,), 0.3, requires_grad=True)
    fixed = {n: m.detach() for n, m in mask.items()}
    inner = sum(entropy(out(t, w, fixed, data[t][0])) for t in range(k))
    (gw,) = torch.autograd.grad(inner, [w])
    w1 = (0.3 - base_lr * gw.sign()).detach()
    delta = torch.zeros(k, 6, requires_grad=True)
    adv = sum(-nn.functional.cross_entropy(
        out(t, w1, fixed, data[t][1] + delta[t]), out(t, w1, fixed, data[t][1]).argmax(-1))
        for t in range(k))
    (gd,) = torch.autograd.grad(adv, [delta])
    delta1 = -adv_lr * gd.sign()
    torch.testing.assert_close(torch.stack(res.perturbations), delta1, rtol=1e-4, atol=1e-7)
    loss = sum(entropy(out(t, w1, mask, data[t][2]))
               + adv_weight * entropy(out(t, w1, mask, data[t][2] + delta1[t]))
               for t in range(k))
    grads = torch.autograd.grad(loss, [logits[n] for n in names])
    flat_grad = torch.cat([g.reshape(-1) for g in grads])
    big = flat_grad.abs() > 1e-5  # Adam's eps (1e-8) bends the step of tinier gradients
    assert int(big.sum()) > 0.8 * len(big)
    torch.testing.assert_close(res.logits[big], -lr * flat_grad[big].sign(), rtol=1e-3,
                               atol=0)
    assert len(res.trace["inner"]) == len(res.trace["mask"]) == 1
    assert res.trace["inner"][0] == pytest.approx(float(inner.detach()))


def test_adamerging_stage_lowers_the_entropy_with_the_mask_fixed() -> None:
    enc, experts, heads = encoder_and_experts(2)
    res = dam(enc, experts, heads, batches(2, n=1), steps=2, adamerging_steps=30,
              adamerging_lr=0.05)
    assert res.trace["adamerging"][-1] < res.trace["adamerging"][0]
    assert all(torch.isfinite(v).all() for v in res.state_dict.values())


def test_the_perturbation_acts_only_where_allowed() -> None:
    """A channel outside ``perturb_where`` gets no gradient, so its perturbation stays 0."""
    enc, experts, heads = encoder_and_experts(2)
    where = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    res = dam(enc, experts, heads, batches(2), steps=3, adamerging_steps=0, adv_lr=0.1,
              perturb_where=where)
    deltas = torch.stack(res.perturbations)
    assert torch.equal(deltas[:, where == 0], torch.zeros(2, 2))
    assert bool((deltas[:, where == 1] != 0).any())


def test_tasks_may_have_inputs_of_different_shapes() -> None:
    """One perturbation per task, each shaped like that task's inputs."""

    class Pool(nn.Module):  # (B, L, 6) -> (B, 5), any L
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).mean(1)

    torch.manual_seed(0)
    enc = Pool()
    experts = [{n: p.detach() + 0.3 * torch.randn_like(p) for n, p in enc.named_parameters()}
               for _ in range(2)]
    heads = [nn.Linear(5, 3).requires_grad_(False) for _ in range(2)]
    data = [[torch.randn(4, 3, 6)], [torch.randn(4, 7, 6)]]
    res = dam(enc, experts, heads, data, steps=2, adamerging_steps=1, adv_lr=0.1)
    assert [tuple(d.shape) for d in res.perturbations] == [(3, 6), (7, 6)]


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"adv_weight": -1.0},
                                 {"eval_mask": "hard"}, {"steps": -1}, {"base_lr": 0.0}])
def test_bad_settings_are_refused_in_one_line(bad: dict) -> None:
    enc, experts, heads = encoder_and_experts(2)
    with pytest.raises(ValueError) as err:
        dam(enc, experts, heads, batches(2), **bad)
    assert "\n" not in str(err.value) and "dam" in str(err.value)

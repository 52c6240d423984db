"""FAMO against Algorithm 1 on hand-made sequences, and against torchjd's FAMO."""

from __future__ import annotations

import itertools
import math

import torch
from losslevel_helpers import decide, grad_wrt_losses, make
from torchjd.scalarization import FAMO as TorchjdFAMO

from manytask.balancers.famo import FAMO


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_first_step_is_the_log_loss_average_with_convex_weights() -> None:
    method = make("famo", ("a", "b"))
    decision, losses = decide(method, [2.0, 0.25])
    # z = (1/2, 1/2): weights c z_k / L_k with c = 1 / sum z_k / L_k, i.e. (1/9, 8/9).
    assert torch.allclose(decision.weights, torch.tensor([1 / 9, 8 / 9], dtype=torch.float64),
                          rtol=1e-7)
    assert decision.objective is not None
    c = 1 / (0.5 / 2.0 + 0.5 / 0.25)
    expected = c * 0.5 * (math.log(2.0) + math.log(0.25))
    assert math.isclose(float(decision.objective.detach()), expected, rel_tol=1e-7)
    assert torch.allclose(grad_wrt_losses(decision, losses), decision.weights)


def test_sgd_logit_updates_on_a_two_step_sequence() -> None:
    lr, wd = 0.5, 0.1
    method = FAMO(lr=lr, weight_decay=wd, optimizer="sgd", eps=1e-12)
    method.setup(("a", "b"))
    decide(method, [1.0, 1.0])
    assert torch.equal(method.logits, torch.zeros(2, dtype=torch.float64))  # nothing to compare

    # Step 2: task a halved, b did not move: delta = (ln 2, 0), z = (1/2, 1/2),
    # J^T delta = z * (delta - z.delta) = (ln2/4, -ln2/4); xi = -lr * that (xi was 0).
    decide(method, [0.5, 1.0])
    a = lr * math.log(2) / 4
    assert torch.allclose(method.logits, torch.tensor([-a, a], dtype=torch.float64), rtol=1e-9)

    # Step 3: now b halves: delta = (0, ln 2), with the weight decay on the current logits.
    decision, _ = decide(method, [0.5, 0.5])
    z = _softmax([-a, a])
    delta = [0.0, math.log(2)]
    zd = z[0] * delta[0] + z[1] * delta[1]
    xi = [x - lr * (zk * (dk - zd) + wd * x) for x, zk, dk in zip([-a, a], z, delta, strict=False)]
    assert torch.allclose(method.logits, torch.tensor(xi, dtype=torch.float64), rtol=1e-9)
    z3 = _softmax(xi)
    ratio = [z3[0] / 0.5, z3[1] / 0.5]
    expected = [r / sum(ratio) for r in ratio]
    assert torch.allclose(decision.weights, torch.tensor(expected, dtype=torch.float64))


def test_adam_first_logit_step_has_size_lr() -> None:
    # At Adam's first step m_hat / sqrt(v_hat) = sign(gradient), so each logit moves by lr.
    method = make("famo", ("a", "b"), lr=0.025, weight_decay=0.0)
    decide(method, [1.0, 1.0])
    decide(method, [0.5, 1.0])
    assert torch.allclose(method.logits, torch.tensor([-0.025, 0.025], dtype=torch.float64),
                          rtol=1e-6)


def test_the_task_that_improves_less_gains_weight() -> None:
    method = make("famo", ("fast", "slow"), lr=0.1)
    z_slow = []
    for t in range(8):
        decide(method, [0.8**t, 1.0])
        z_slow.append(float(torch.softmax(method.logits, dim=0)[1]))
    assert all(b > a for a, b in itertools.pairwise(z_slow))
    assert z_slow[-1] > 0.6


def test_logits_move_only_for_tasks_present_in_consecutive_calls() -> None:
    method = make("famo", lr=0.3)
    decide(method, [1.0, 1.0, 1.0], ("a", "b", "c"))
    decide(method, [0.5, 1.0], ("a", "c"))
    assert method.logits[1] == 0  # b absent now
    before = method.logits.clone()
    decide(method, [0.4, 0.9], ("a", "b"))  # b was absent at the previous call: no delta
    assert method.logits[1] == before[1] and method.logits[2] == before[2]
    assert method.logits[0] == before[0]  # a alone was comparable: no softmax to move


def test_agrees_with_torchjd_famo_over_a_sequence() -> None:
    gen = torch.Generator().manual_seed(1)
    sequence = [torch.rand(3, generator=gen, dtype=torch.float64) * 2 + 0.05 for _ in range(8)]
    ours = make("famo")  # lr 0.025, weight_decay 1e-3, Adam: torchjd's defaults
    theirs = TorchjdFAMO(3).double()
    for t, values in enumerate(sequence):
        decision, _losses = decide(ours, values.tolist())
        leaf = values.clone().requires_grad_(True)
        their_objective = theirs(leaf)
        (their_weights,) = torch.autograd.grad(their_objective, leaf)
        assert decision.objective is not None
        assert torch.allclose(decision.objective.detach(), their_objective.detach(), rtol=1e-9)
        assert torch.allclose(decision.weights, their_weights, rtol=1e-9)
        if t + 1 < len(sequence):
            theirs.update(sequence[t + 1])
    assert torch.allclose(ours.logits, theirs._w.detach(), rtol=1e-9, atol=1e-12)


def test_min_losses_shift_the_logarithm() -> None:
    method = make("famo", ("a", "b"), min_losses={"a": 1.0}, eps=1e-12)
    decision, _ = decide(method, [3.0, 2.0])  # D = (2, 2): equal weights
    assert torch.allclose(decision.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    decision, losses = decide(method, [0.5, 2.0])  # below its bound: clamped, no gradient
    assert torch.isfinite(decision.weights).all() and decision.weights[0] == 0
    assert torch.allclose(grad_wrt_losses(decision, losses), decision.weights)

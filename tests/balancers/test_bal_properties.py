"""The property suite every registered balancer gets by registering (parametrised over the
registry, no hand-kept list): permutation equivariance, absent tasks, exact vs feature level on
an identity trunk, finite and quick decisions on degenerate inputs, state round trip, and
determinism under a seed. Replaces the per-method permutation tests."""

from __future__ import annotations

import pytest
import torch
from prop_helpers import METHODS, build, is_stochastic, run, sequence, step

import manytask
from manytask.balancers import NonFiniteGradientError, make_balancer

NAMES = ("a", "b", "c", "d")
TIME_BOUND = 0.5  # seconds per decision (K <= 9 here), on a loaded 2-core machine


def _close(x: torch.Tensor, y: torch.Tensor, rel: float = 1e-7) -> bool:
    scale = max(float(torch.cat([x.abs(), y.abs()]).max()), 1e-300)
    return bool(((x - y).abs() <= rel * scale + 1e-12).all())


@pytest.mark.parametrize("name", METHODS)
def test_determinism_under_a_seed(name: str) -> None:
    inputs = sequence(4, 6)
    a, b = run(name, NAMES, inputs, seed=3), run(name, NAMES, inputs, seed=3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.weights, y.weights) and torch.equal(x.update, y.update)


@pytest.mark.parametrize("name", METHODS)
def test_permutation_equivariance(name: str) -> None:
    if is_stochastic(name):
        pytest.skip(f"{name} draws random numbers: equivariant in distribution only")
    perm = torch.tensor([2, 0, 3, 1])
    inputs = sequence(4, 6, n=3, seed=1)
    plain = run(name, NAMES, inputs)
    permuted_names = tuple(NAMES[i] for i in perm)
    permuted = run(name, NAMES, [(J[perm], loss[perm]) for J, loss in inputs],
                   present=permuted_names)
    for x, y in zip(plain, permuted, strict=True):
        assert _close(y.weights, x.weights[perm]), (x.weights, y.weights)
        assert _close(y.update, x.update)


@pytest.mark.parametrize("name", METHODS)
def test_absent_task(name: str) -> None:
    # Set up with four tasks, task "b" absent from every batch: the decisions must be those of
    # the method set up with the three present tasks only (the absent task plays no part), up
    # to a positive factor: methods on the simplex may keep the present tasks' share of it.
    present = ("a", "c", "d")
    inputs = sequence(3, 5, n=3, seed=2)
    with_absent = run(name, NAMES, inputs, present=present)
    alone = run(name, present, inputs)
    for x, y in zip(with_absent, alone, strict=True):
        assert x.weights.shape == (3,) and bool(torch.isfinite(x.weights).all())
        factor = float(x.weights.abs().sum()) / max(float(y.weights.abs().sum()), 1e-300)
        assert factor > 0 and _close(x.weights, factor * y.weights), (x.weights, y.weights)


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip(name: str) -> None:
    inputs = sequence(4, 6, n=4, seed=4)
    torch.manual_seed(5)
    original = build(name, NAMES)
    for J, loss in inputs[:2]:
        step(original, NAMES, J, loss)
    restored = build(name, NAMES)
    restored.load_state_dict(original.state_dict())
    for J, loss in inputs[2:]:
        rng = torch.get_rng_state()
        x = step(original, NAMES, J, loss)
        torch.set_rng_state(rng)
        y = step(restored, NAMES, J, loss)
        assert torch.equal(x.weights, y.weights) and torch.equal(x.update, y.update)


@pytest.mark.parametrize("name", METHODS)
def test_exact_and_feature_level_agree_on_an_identity_trunk(name: str) -> None:
    # Features = the shared parameters themselves: dL/dz = dL/dtheta, so both modes see the same
    # per-task gradients and must leave the same gradient on the trunk and the heads.
    def one(mode: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        theta = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5))
        heads = [torch.nn.Parameter(torch.linspace(0.5, -0.5 + k, 5)) for k in range(4)]
        method = make_balancer(name)
        method.setup(NAMES)
        for t in range(2):
            for p in (theta, *heads):
                p.grad = None
            z = theta * 1.0  # the identity trunk
            losses = {n: ((heads[k] * z).sum() - k - t) ** 2 + 0.1 * (k + 1)
                      for k, n in enumerate(NAMES)}
            manytask.backward(losses, method, features=z, shared_params=[theta], mode=mode)
        return [p.grad.clone() for p in (theta, *heads)]

    for x, y in zip(one("exact"), one("feature"), strict=True):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)


def _degenerate() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(9)
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    full = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    return {
        "zero": torch.zeros(4, 5, dtype=torch.float64),
        "rank_one": torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)[:, None] * g,
        "duplicates": torch.stack([g, g, full[2], full[2]]),
        "opposite": torch.stack([g, -g, 2 * full[2], -2 * full[2]]),
        "k_above_rank": torch.randn(9, 3, generator=gen, dtype=torch.float64),
        "one_task": full[:1],
        "d_is_one": full[:, :1],
        "tiny_1e-20": full * 1e-20,
        "huge_1e15": full * 1e15,
        "float32": full.float(),
        "float32_k_above_rank": (torch.randn(6, 2, generator=gen, dtype=torch.float64)
                                 @ torch.randn(2, 4, generator=gen, dtype=torch.float64)).float(),
        "float32_overflow_1e19": full.float() * 1e19,
    }


DEGENERATE = _degenerate()


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name", METHODS)
def test_finite_and_quick_on_degenerate_inputs(name: str, case: str) -> None:
    J = DEGENERATE[case]
    k = J.shape[0]
    tasks = tuple(f"t{i}" for i in range(k))
    losses = torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    torch.manual_seed(0)
    balancer = build(name, tasks)
    seconds = []
    for _ in range(2):  # two steps: stateful methods use their state on the second
        try:
            out = step(balancer, tasks, J, losses)
        except NonFiniteGradientError as err:
            # The one other outcome allowed: a clear error naming the method, and only where
            # the gradient information itself overflows, never for a Gramian method (its
            # Gramian is accumulated in float64, finite at these scales).
            assert balancer.requires != "gramian" and case.endswith("overflow_1e19"), err
            assert str(err).startswith(f"{name}: ") and "\n" not in str(err)
            return
        assert out.weights.shape == (k,)
        assert bool(torch.isfinite(out.weights).all()), (case, out.weights)
        assert bool(torch.isfinite(out.update).all()), (case, out.update)
        seconds.append(out.seconds)
    assert min(seconds) < TIME_BOUND, f"{name} took {seconds} s on {case}"

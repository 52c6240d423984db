"""Degenerate inputs of the kind torchjd's aggregator property tests use (our own generators of
its input families, see prop_helpers.torchjd_like), run against every registered method with
torchjd's expectations where our method has the property; plus the regressions of issue 13
item 10 (float32 Gramians, a slightly negative eigenvalue, overflow, solver cost)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from prop_helpers import METHODS, build, step, torchjd_like

from manytask.balancers import NonFiniteGradientError, make_balancer
from manytask.engine.gradients import gramian_of

# Our methods with torchjd's "non-conflicting" property (J A(J) >= 0), and with "linear under
# scaling" (A(diag(a c1 + b c2) J) = a A(diag(c1) J) + b A(diag(c2) J) for a, b, c >= 0).
NON_CONFLICTING = ("upgrad", "dualproj", "mgda", "nash_mtl", "fairgrad")
LINEAR_UNDER_SCALING = ("upgrad", "config")
ISSUE_J = torch.tensor([[0.3, -1.1, 0.7], [-0.6, 2.2, -1.4], [0.9, -3.3, 2.1]])


def _aggregate(name: str, J: torch.Tensor, **params: object) -> torch.Tensor:
    tasks = tuple(f"t{i}" for i in range(J.shape[0]))
    balancer = make_balancer(name, **params)
    balancer.setup(tasks)
    torch.manual_seed(0)
    return step(balancer, tasks, J, torch.ones(J.shape[0])).update


@pytest.mark.parametrize("name", METHODS)
def test_expected_structure_on_torchjd_inputs(name: str) -> None:
    inputs = torchjd_like()
    for J in inputs["typical"] + inputs["scaled"]:
        d = _aggregate(name, J)
        assert d.shape == (J.shape[1],) and bool(torch.isfinite(d).all()), (name, J.shape)


@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_non_conflicting_on_torchjd_inputs(name: str) -> None:
    inputs = torchjd_like()
    # Nash-MTL and FairGrad solve G w = w^-p, which has no solution where a non-negative
    # combination of the gradients vanishes (K > rank makes one likely): their documented
    # ridge applies there. So for them: no such combination, or independent gradients.
    fair = name in ("nash_mtl", "fairgrad")
    independent = [j for j in inputs["plain"] if torch.linalg.matrix_rank(j) == j.shape[0]]
    for J in inputs["not_strong"] + independent if fair else inputs["typical"]:
        tasks = tuple(f"t{i}" for i in range(J.shape[0]))
        out = step(build(name, tasks), tasks, J, torch.ones(J.shape[0]))
        jd = J.double() @ out.update
        # Rounding of G w: relative to ||G|| sum|w| (d itself is ~0 on stationary matrices).
        tol = 1e-12 * float(J.double().norm()) ** 2 * float(out.weights.abs().sum())
        assert float(jd.min()) >= -tol, (name, jd, tol)


@pytest.mark.parametrize("name", LINEAR_UNDER_SCALING)
def test_linear_under_scaling_on_torchjd_inputs(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    for J in torchjd_like()["typical"]:
        J = J.double()
        c1, c2 = torch.rand(J.shape[0], generator=gen), torch.rand(J.shape[0], generator=gen)
        a, b = 0.3, 0.9
        x = _aggregate(name, (a * c1 + b * c2).double()[:, None] * J)
        y = a * _aggregate(name, c1.double()[:, None] * J) + b * _aggregate(
            name, c2.double()[:, None] * J)
        assert torch.allclose(x, y, atol=1e-7 * float(J.abs().max())), name


def test_upgrad_is_strongly_stationary_on_torchjd_inputs() -> None:
    # A(J) = 0 only if some w > 0 has w^T J = 0: these matrices have none.
    for J in torchjd_like()["not_strong"]:
        assert float(_aggregate("upgrad", J).norm()) > 1e-3


@pytest.mark.parametrize(("name", "factor"), [("imtl_g", 1.0), ("config", 1.0),
                                              ("aligned_mtl", 1 / 3)])
def test_float32_rank_one_jacobian_agrees_with_torchjd(name: str, factor: float) -> None:
    # Issue 13: with the Gramian accumulated in float32, imtl_g and config returned about 0.
    aggregation = pytest.importorskip("torchjd.aggregation")
    theirs = {"imtl_g": aggregation.IMTLG, "config": aggregation.ConFIG,
              "aligned_mtl": aggregation.AlignedMTL}[name]()(ISSUE_J).double()
    ours = _aggregate(name, ISSUE_J) * factor  # torchjd's Aligned-MTL is ours divided by K
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours, theirs)


def test_float32_jacobian_gives_an_exact_float64_gramian() -> None:
    J = torch.randn(7, 1000, generator=torch.Generator().manual_seed(3))
    exact = J.double() @ J.double().T
    assert torch.equal(gramian_of([J]), exact)
    assert torch.equal(gramian_of([J[:, :400], J[:, 400:]]), gramian_of([J[:, :400]]) + gramian_of(
        [J[:, 400:]]))


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda", "cagrad"])
def test_slightly_negative_eigenvalue(name: str) -> None:
    # Issue 13: "unbounded below" on a float64 Gramian with an eigenvalue of -5e-19. Here the
    # eigenvector of the negative eigenvalue (1, 1, 0) is non-negative, so on the raw matrix
    # v^T G v decreases without bound along a feasible ray of every dual-cone problem.
    b = float(np.nextafter(1.0, 2.0))
    G = torch.tensor([[1.0, -b, 0.5], [-b, 1.0, -0.5], [0.5, -0.5, 1.0]], dtype=torch.float64)
    w = build(name, "abc").decide(torch.ones(3), "abc", G).weights
    assert bool(torch.isfinite(w).all())
    if name != "cagrad":  # non-conflicting, in Gramian terms: J (J^T w) >= 0 is G w >= 0
        assert float((G @ w).min()) >= -1e-12


def test_prepared_gramian_is_psd_relative_to_each_task() -> None:
    from manytask.balancers._gramian import prepared

    b = float(np.nextafter(1.0, 2.0))
    scales = np.array([1.0, 1e-13, 1e6])  # the repair must be relative to each task's norm
    G = np.array([[1.0, -b, 0.5], [-b, 1.0, -0.5], [0.5, -0.5, 1.0]]) * np.outer(scales, scales)
    P = prepared(G, "test")
    cos = P / np.outer(scales, scales)
    assert np.linalg.eigvalsh(cos)[0] >= -1e-15
    assert np.allclose(cos, G / np.outer(scales, scales), atol=1e-15)


@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda", "cagrad", "nash_mtl",
                                  "fairgrad", "imtl_g", "aligned_mtl", "config"])
def test_rank_deficient_20_by_10_is_quick(name: str, noisy: bool) -> None:
    # Issue 13: 3.75 s (upgrad), 1.4 s (mgda) and 62 s (cagrad) on a 20 x 10 rank-deficient J.
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(20, 5, generator=gen) @ torch.randn(5, 10, generator=gen)
    # noisy: a Gramian formed in float32, whose rounding makes it full rank and indefinite.
    G = (J @ J.T).double() if noisy else gramian_of([J])
    tasks = tuple(f"t{i}" for i in range(20))
    balancer = build(name, tasks)
    best = np.inf
    for _ in range(2):
        start = time.perf_counter()
        w = balancer.decide(torch.ones(20), tasks, G).weights
        best = min(best, time.perf_counter() - start)
        assert bool(torch.isfinite(w).all())
    # torchjd takes 1-13 ms; Nash-MTL and FairGrad's Newton loop, 100 iterations at most where
    # no solution exists (a ridge then makes one), takes about 0.04 s (bounds leave room for load).
    assert best < (0.3 if name in ("nash_mtl", "fairgrad") else 0.1), f"{name}: {best:.3f} s"


@pytest.mark.parametrize("name", [m for m in METHODS if make_balancer(m).requires == "gramian"])
def test_a_non_finite_gramian_is_one_clear_error(name: str) -> None:
    G = torch.eye(3, dtype=torch.float64)
    G[0, 0] = float("inf")
    balancer = build(name, "abc")
    who = getattr(balancer, "base", name)  # periodic reports the method that computed
    with pytest.raises(NonFiniteGradientError, match=f"^{who}: .*not finite") as err:
        balancer.decide(torch.ones(3), "abc", G)
    assert isinstance(err.value, FloatingPointError) and "\n" not in str(err.value)


def test_config_keeps_a_task_of_tiny_norm() -> None:
    # ConFIG's direction depends on the unit gradients only: scaling a task's gradient by 1e-14
    # must not change it (it used to drop a task below 1e-12 of the largest norm).
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tiny = J.clone()
    tiny[1] *= 1e-14
    d, dt = _aggregate("config", J), _aggregate("config", tiny)
    assert torch.allclose(d / d.norm(), dt / dt.norm(), atol=1e-10)

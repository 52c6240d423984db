"""Each merge method against its definition: hand-computed cases, invariants, closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from manytask.merging import available_methods, merge_state_dicts

T = torch.tensor


def merge_vectors(method, taus, *, base=None, params=None, model_parameters=None):
    """Merge task vectors of a single tensor 'w' given as lists of floats."""
    taus = [T(t, dtype=torch.float64) for t in taus]
    b = torch.zeros_like(taus[0]) if base is None else T(base, dtype=torch.float64)
    out = merge_state_dicts(
        method,
        [{"w": b + t} for t in taus],
        base={"w": b},
        parameters=params,
        model_parameters=model_parameters or [{} for _ in taus],
    )
    return out["w"] - b


def test_registry_lists_every_method() -> None:
    assert set(available_methods()) >= {
        "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "della",
        "della_linear", "breadcrumbs", "breadcrumbs_ties", "slerp", "model_stock", "metagpt",
        "consensus",
    }


def test_linear_and_task_arithmetic_by_hand() -> None:
    a, b = {"w": T([1.0, 2.0])}, {"w": T([3.0, -2.0])}
    out = merge_state_dicts("linear", [a, b], model_parameters=[{"weight": 1}, {"weight": 3}])
    assert torch.allclose(out["w"], T([2.5, -1.0]))
    out = merge_state_dicts("linear", [a, b], parameters={"normalize": False},
                            model_parameters=[{"weight": 1}, {"weight": 3}])
    assert torch.allclose(out["w"], T([10.0, -4.0]))
    d = merge_vectors("task_arithmetic", [[1, 2], [3, -2]], base=[10, 10],
                      params={"lambda": 0.5}, model_parameters=[{"weight": 1}, {"weight": 2}])
    assert torch.allclose(d, T([3.5, -1.0], dtype=torch.float64))


TAUS = [[3.0, -1.0, 2.0, 0.5], [-2.0, -4.0, 1.0, 0.1], [1.0, 2.0, -5.0, 0.2]]


def test_ties_sign_election_and_disjoint_mean_without_trimming() -> None:
    # Summed signs: [+, -, -, +]; mean of the agreeing entries only.
    d = merge_vectors("ties", TAUS, model_parameters=[{"density": 1.0}] * 3)
    assert torch.allclose(d, T([2.0, -2.5, -5.0, 0.8 / 3], dtype=torch.float64))


def test_ties_with_trimming() -> None:
    # density 0.5 keeps the 2 largest magnitudes of each: [3,0,2,0], [-2,-4,0,0], [0,2,-5,0];
    # summed: [1,-2,-3,0] -> signs [+,-,-,0]; disjoint means: [3, -4, -5, 0].
    d = merge_vectors("ties", TAUS, model_parameters=[{"density": 0.5}] * 3,
                      params={"lambda": 2.0})
    assert torch.allclose(d, 2 * T([3.0, -4.0, -5.0, 0.0], dtype=torch.float64))


def test_ties_weighting_conventions() -> None:
    # Paper: elect on unweighted vectors (1 - 3 < 0 -> negative wins: -3).
    # mergekit: elect on weighted ones (4*1 - 3 > 0 -> positive wins: 4*1/4 = 1).
    mp = [{"weight": 4.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}]
    paper = merge_vectors("ties", [[1.0], [-3.0]], model_parameters=mp)
    kit = merge_vectors("ties", [[1.0], [-3.0]], model_parameters=mp,
                        params={"convention": "mergekit"})
    assert paper.item() == pytest.approx(-3.0)
    assert kit.item() == pytest.approx(1.0)


def test_dare_rescaling_keeps_the_expectation() -> None:
    n = 200_000
    d = merge_vectors("dare_linear", [[1.0] * n], model_parameters=[{"density": 0.3}])
    kept = d != 0
    assert kept.double().mean().item() == pytest.approx(0.3, abs=0.005)  # sd 0.001
    assert torch.allclose(d[kept], torch.full_like(d[kept], 1 / 0.3))
    assert d.mean().item() == pytest.approx(1.0, abs=0.02)  # sd 0.0034


def test_dare_l1_rescale_and_seed() -> None:
    tau = torch.linspace(-1, 1, 5000).tolist()
    kw = {"model_parameters": [{"density": 0.4}]}
    d = merge_vectors("dare_linear", [tau], params={"rescale": "l1"}, **kw)
    assert d.abs().sum().item() == pytest.approx(T(tau, dtype=torch.float64).abs().sum().item())
    again = merge_vectors("dare_linear", [tau], params={"rescale": "l1"}, **kw)
    other = merge_vectors("dare_linear", [tau], params={"rescale": "l1", "seed": 1}, **kw)
    assert torch.equal(d, again)
    assert not torch.equal(d, other)


def test_random_masks_do_not_depend_on_other_tensors() -> None:
    g = torch.Generator().manual_seed(3)
    base = {"a": torch.randn(50, 20, generator=g), "b": torch.randn(40, generator=g)}
    model = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
    mp = [{"density": 0.5, "epsilon": 0.2}]
    full = merge_state_dicts("della", [model], base=base, model_parameters=mp)
    only_b = merge_state_dicts("della", [{"b": model["b"]}], base={"b": base["b"]},
                               model_parameters=mp)
    assert torch.equal(full["b"], only_b["b"])


def test_della_keep_probability_grows_with_rank_and_keeps_expectation() -> None:
    rows, cols = 4000, 5
    tau = torch.arange(1, cols + 1, dtype=torch.float64).repeat(rows, 1)  # rank = column
    base = torch.zeros_like(tau)
    out = merge_state_dicts("della_linear", [{"w": tau}], base={"w": base},
                            model_parameters=[{"density": 0.5, "epsilon": 0.2}])["w"]
    keep = (out != 0).double().mean(0)
    expected = 0.5 - 0.2 + 0.4 * torch.arange(cols, dtype=torch.float64) / (cols - 1)
    assert torch.allclose(keep, expected, atol=0.03)  # sd <= 0.008
    assert torch.allclose(out.mean(0), tau[0], rtol=0.08)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_della_row_order_sorts_each_row(dtype: torch.dtype) -> None:
    from manytask.merging.methods.sparse import _row_order

    g = torch.Generator().manual_seed(0)
    a = torch.randperm(7 * 300, generator=g).to(dtype).reshape(7, 3, 100)  # no ties
    assert torch.equal(_row_order(a), torch.argsort(a.reshape(7, 300), dim=1))
    assert torch.equal(_row_order(a[0, 0]), torch.argsort(a[0, 0]).unsqueeze(0))
    if dtype == torch.float32:  # ties: in column order
        tied = torch.tensor([[2.0, 0.0, 2.0, 1.0, 0.0]])
        assert _row_order(tied).tolist() == [[1, 4, 3, 0, 2]]


def test_breadcrumbs_cuts_both_tails() -> None:
    tau = [0.1 * i for i in range(1, 11)]
    # density 0.5, gamma 0.1: drop the largest (1.0) and the 4 smallest; keep 0.5 .. 0.9.
    d = merge_vectors("breadcrumbs", [tau], model_parameters=[{"density": 0.5, "gamma": 0.1}])
    expected = [0.0] * 4 + tau[4:9] + [0.0]
    assert torch.allclose(d, T(expected, dtype=torch.float64))


def test_consensus_masks_on_a_constructed_case() -> None:
    taus = [[1.0, 0.0, 1.0, 0.01], [1.0, 1.0, 0.0, 0.01], [0.0, 1.0, 0.0, 5.0]]
    # tau_MTL = [2, 2, 1, 5.02]; TALL masks with lambda 0.5: [1,0,1,0], [1,1,0,0], [0,1,0,1];
    # votes [2, 2, 1, 1]; k = 2 keeps the first two entries of tau_MTL.
    d = merge_vectors("consensus", taus, model_parameters=[{"mask_lambda": 0.5}] * 3)
    assert torch.allclose(d, T([2.0, 2.0, 0.0, 0.0], dtype=torch.float64))
    d1 = merge_vectors("consensus", taus, params={"k": 1},
                       model_parameters=[{"mask_lambda": 0.5}] * 3)
    assert torch.allclose(d1, T([2.0, 2.0, 1.0, 5.02], dtype=torch.float64))


def test_slerp_endpoints_and_angle() -> None:
    a = T([1.0, 0.0, 0.0], dtype=torch.float64)
    b = T([0.0, 2.0, 0.0], dtype=torch.float64)
    for t, expect in [(0.0, a), (1.0, b)]:
        out = merge_state_dicts("slerp", [{"w": b}], base={"w": a}, parameters={"t": t})["w"]
        assert torch.allclose(out, expect)
    a2 = T([1.0, 0.0], dtype=torch.float64)
    b2 = T([math.cos(1.2), math.sin(1.2)], dtype=torch.float64)
    out = merge_state_dicts("slerp", [{"w": b2}], base={"w": a2}, parameters={"t": 0.25})["w"]
    # Unit vectors at angle 1.2: the result is the unit vector at angle 0.25 * 1.2.
    assert torch.allclose(out, T([math.cos(0.3), math.sin(0.3)], dtype=torch.float64))


def test_model_stock_closed_form() -> None:
    phi = math.pi / 3  # cos = 0.5 -> t = 2 * 0.5 / (1 + 0.5) = 2/3
    taus = [[1.0, 0.0], [math.cos(phi), math.sin(phi)]]
    d = merge_vectors("model_stock", taus, base=[5.0, -5.0])
    mean = (T(taus[0]) + T(taus[1])).double() / 2
    assert torch.allclose(d, (2 / 3) * mean)
    same = merge_vectors("model_stock", [[1.0, 2.0], [2.0, 4.0]])  # cos = 1 -> t = 1
    assert torch.allclose(same, T([1.5, 3.0], dtype=torch.float64))


def test_model_stock_filter_wise() -> None:
    base = torch.zeros(2, 2, dtype=torch.float64)
    m1 = T([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    m2 = T([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # row 0: cos 0 -> t 0; row 1: t 1
    out = merge_state_dicts("model_stock", [{"w": m1}, {"w": m2}], base={"w": base},
                            parameters={"filter_wise": True})["w"]
    assert torch.allclose(out, T([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64))


def test_metagpt_coefficients() -> None:
    # lambda = ||tau_i||^2 / sum_j ||tau_j||^2 = 9/25 and 16/25.
    d = merge_vectors("metagpt", [[3.0, 0.0], [0.0, 4.0]])
    assert torch.allclose(d, T([27 / 25, 64 / 25], dtype=torch.float64))

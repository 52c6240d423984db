"""Adaptive projective gradient descent merging against its definition (learned/adagd.py)."""

from __future__ import annotations

import pytest
import torch

from manytask.merging.learned import adagd_merge
from manytask.merging.learned.adagd import gap_loss, shared_projection


def family(k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"layer.0.weight": (6, 5), "layer.1.weight": (4, 6), "layer.1.bias": (4,),
              "embed.weight": (7, 5)}
    base = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    tuned = [{n: w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64)
              for n, w in base.items()} for _ in range(k)]
    return base, tuned


def test_without_steps_it_is_the_masked_normalised_task_arithmetic() -> None:
    base, tuned = family()
    eta, keep = 0.5, 0.4
    res = adagd_merge(base, tuned, eta=eta, keep=keep, steps=0)
    mats = ["layer.0.weight", "layer.1.weight"]
    expected = {n: base[n].clone() for n in mats}
    for sd in tuned:
        taus = {n: sd[n] - base[n] for n in mats}
        flat = torch.cat([taus[n].reshape(-1) for n in mats]).abs()
        d = flat.numel()
        threshold = flat.sort().values[d - int(d * keep) - 1]  # the authors' k-th smallest
        for n in mats:
            lam = eta / taus[n].norm()
            expected[n] += lam * taus[n] * (taus[n].abs() >= threshold)
        kept = sum(int((taus[n].abs() >= threshold).sum()) for n in mats)
        assert kept == int(d * keep) + 1
    for n in mats:
        torch.testing.assert_close(res.state_dict[n], expected[n])
        assert torch.equal(res.deltas[n], torch.zeros_like(base[n]))
    for n in ("layer.1.bias", "embed.weight"):  # not processed: the base's values
        assert torch.equal(res.state_dict[n], base[n])


def test_shared_projection_is_an_orthogonal_projector_inside_the_tasks_directions() -> None:
    _, tuned = family(k=2)
    base, _ = family(k=2)
    taus = torch.stack([sd["layer.0.weight"] - base["layer.0.weight"] for sd in tuned])
    p = shared_projection(taus, subspace=2.0)
    torch.testing.assert_close(p, p.T)
    torch.testing.assert_close(p @ p, p)
    assert int(torch.linalg.matrix_rank(p)) == 5 // 2  # floor(min(out, in) / subspace)
    tops = torch.cat([torch.linalg.svd(t)[0][:, : 5 // 2] for t in taus], dim=1)
    span = tops @ torch.linalg.pinv(tops)
    torch.testing.assert_close(span @ p, p)


def test_first_adam_step_follows_the_projected_gradient_of_the_gap_loss() -> None:
    """Adam's first step is -lr sign(g): g must be (I - P) times the gradient of L at 0,
    written here from L's formula."""
    base, tuned = family()
    lr, eta = 1e-3, 0.5
    res = adagd_merge(base, tuned, eta=eta, keep=1.0, steps=1, lr=lr, subspace=2.0)
    n = "layer.0.weight"
    taus = torch.stack([sd[n] - base[n] for sd in tuned])
    lam = eta / taus.flatten(1).norm(dim=1)
    merged = (lam.view(-1, 1, 1) * taus).sum(0)
    rows = (taus * (taus - merged)).sum(2)                       # e_j, (K, out)
    grad = (2 * rows.unsqueeze(2) * (-lam.sum()) * taus).sum(0)  # dL/dDelta at 0
    g = grad - shared_projection(taus, 2.0) @ grad
    big = g.abs() > 1e-6
    torch.testing.assert_close(res.deltas[n][big], -lr * g[big].sign(), rtol=1e-4, atol=0)
    # keep = 1: every entry kept, so the merge is W0 + sum_j lambda_j (tau_j + Delta)
    torch.testing.assert_close(res.state_dict[n],
                               base[n] + merged + lam.sum() * res.deltas[n])


def test_descent_lowers_the_gap_loss() -> None:
    base, tuned = family()
    res = adagd_merge(base, tuned, eta=0.5, steps=60, lr=1e-2, subspace=6.0)
    for n in ("layer.0.weight", "layer.1.weight"):
        assert res.loss_after[n] < res.loss_before[n]
        taus = torch.stack([sd[n] - base[n] for sd in tuned])
        lam = 0.5 / taus.flatten(1).norm(dim=1)
        assert res.loss_after[n] == pytest.approx(float(gap_loss(taus, lam, res.deltas[n])))


@pytest.mark.parametrize("bad", [{"keep": 0.0}, {"eta": -1.0}, {"steps": -1}, {"lr": 0.0},
                                 {"subspace": 0.5}])
def test_bad_settings_are_refused_in_one_line(bad: dict) -> None:
    base, tuned = family()
    with pytest.raises(ValueError) as err:
        adagd_merge(base, tuned, **bad)
    assert "\n" not in str(err.value) and "adagd_merge" in str(err.value)


def test_a_zero_task_vector_is_refused_and_an_unchanged_matrix_keeps_the_base() -> None:
    base, tuned = family()
    tuned[1] = {n: w.clone() for n, w in base.items()}
    with pytest.raises(ValueError, match="is zero"):
        adagd_merge(base, tuned, steps=0)
    base, tuned = family()
    for sd in tuned:  # a frozen matrix: no model changed it
        sd["layer.1.weight"] = base["layer.1.weight"].clone()
    res = adagd_merge(base, tuned, steps=0, keep=0.4, eta=0.5)
    assert torch.equal(res.state_dict["layer.1.weight"], base["layer.1.weight"])
    taus = [sd["layer.0.weight"] - base["layer.0.weight"] for sd in tuned]
    expected = base["layer.0.weight"].clone()
    for tau in taus:  # ranked over layer.0 alone
        flat = tau.abs().reshape(-1)
        threshold = flat.sort().values[flat.numel() - int(flat.numel() * 0.4) - 1]
        expected += 0.5 / tau.norm() * tau * (tau.abs() >= threshold)
    torch.testing.assert_close(res.state_dict["layer.0.weight"], expected)

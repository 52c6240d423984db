"""The periodic engine schedule: recomputes every N steps, computes no task gradient in
between, checkpoints; usable with every gradient-level method."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import manytask
from manytask.balancers import EverySteps, Periodic, make_balancer

NAMES = ("a", "b", "c")


def _model() -> tuple[nn.Module, dict[str, nn.Module]]:
    torch.manual_seed(0)
    shared: nn.Module = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
    heads: dict[str, nn.Module] = {n: nn.Linear(5, 1) for n in NAMES}
    return shared, heads


def _losses(shared: nn.Module, heads: dict[str, nn.Module], seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=gen)
    z = shared(x)
    return {n: ((heads[n](z) - i) ** 2).mean() for i, n in enumerate(NAMES)}, z


def test_reuse_steps_compute_no_gradient_and_backprop_weighted_sum(monkeypatch) -> None:
    shared, heads = _model()
    engine = sys.modules["manytask.engine.backward"]  # the module, not the function
    calls: list[int] = []
    original = engine.task_gradients

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "task_gradients", counting)
    method = make_balancer("periodic", base="upgrad", every=3)
    reference = make_balancer("upgrad")
    reference.setup(NAMES)
    params = list(shared.parameters())
    for step in range(7):
        losses, z = _losses(shared, heads, step)
        for p in params + [q for h in heads.values() for q in h.parameters()]:
            p.grad = None
        res = manytask.backward(losses, method, features=z, shared_params=params)
        assert len(calls) == step // 3 + 1  # Gramians only at steps 0, 3, 6
        if step % 3 == 0:
            stored = torch.tensor([res.weights[n] for n in NAMES], dtype=torch.float64)
            continue
        assert torch.allclose(torch.tensor([res.weights[n] for n in NAMES]).double(), stored)
        # Reuse step = one backward of sum_k w_k L_k (heads weighted too).
        losses2, _ = _losses(shared, heads, step)
        objective = sum(float(stored[i]) * losses2[n] for i, n in enumerate(NAMES))
        expected = torch.autograd.grad(objective, params + list(heads["b"].parameters()))
        got = [p.grad for p in params + list(heads["b"].parameters())]
        assert all(g is not None for g in got)
        for g, e in zip(got, expected, strict=True):
            assert g is not None and torch.allclose(g, e, atol=1e-6)


def _count_gradients(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    engine = sys.modules["manytask.engine.backward"]
    calls: list[int] = []
    original = engine.local_gradients

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "local_gradients", counting)
    fast = engine.linear_heads  # the linear-head path computes no per-task gradient either

    def counting_fast(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return fast(*args, **kwargs)

    monkeypatch.setattr(engine, "linear_heads", counting_fast)
    return calls


@pytest.mark.parametrize(("name", "mode"), [("graddrop", "exact"), ("moco", "feature"),
                                            ("gradnorm", "exact"), ("imtl", "feature")])
def test_schedule_serves_every_gradient_level_kind(monkeypatch, name: str, mode: str) -> None:
    calls = _count_gradients(monkeypatch)
    shared, heads = _model()
    method = make_balancer(name).recompute_every(2)
    weights = []
    for step in range(4):
        losses, z = _losses(shared, heads, step)
        res = manytask.backward(losses, method, features=z, shared_params=shared.parameters(),
                                mode=mode)
        weights.append([res.weights[n] for n in NAMES])
        assert (res.gramian is None) == (step % 2 == 1)
    assert len(calls) == 2  # steps 0 and 2 only
    assert weights[1] == weights[0] and weights[3] == weights[2]


def test_compute_steps_equal_the_base_method() -> None:
    grads = []
    for method in (Periodic("cagrad", every=2, base_params={"c": 0.5}),
                   make_balancer("cagrad", c=0.5)):
        shared, heads = _model()
        losses, z = _losses(shared, heads, 0)
        manytask.backward(losses, method, features=z, shared_params=shared.parameters())
        grads.append([p.grad for p in shared.parameters()])
    for a, b in zip(*grads, strict=True):
        assert a is not None and b is not None and torch.equal(a, b)


def test_absent_task_gets_mean_of_stored_weights_and_state_round_trip() -> None:
    m = Periodic("imtl_g", every=5)
    m.setup(NAMES)
    schedule = m.schedule
    assert isinstance(schedule, EverySteps) and schedule.due()
    w = torch.tensor([0.25, 2.0], dtype=torch.float64)
    schedule.record(m.index(["a", "c"]), w)
    assert not schedule.due()
    reused = schedule.reuse(m.index(list(NAMES)))
    assert torch.allclose(reused, torch.stack([w[0], w.mean(), w[1]]))
    other = Periodic("imtl_g", every=5)
    other.setup(NAMES)
    other.load_state_dict(m.state_dict())
    assert isinstance(other.schedule, EverySteps)
    assert int(other.schedule.step) == 2
    assert torch.allclose(other.schedule.stored, schedule.stored, equal_nan=True)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="every"):
        Periodic("upgrad", every=0)
    with pytest.raises(ValueError, match="gradient-level"):
        Periodic("rlw")
    with pytest.raises(ValueError, match="loss weighting"):
        make_balancer("uncertainty").recompute_every(3)
    with pytest.raises(ValueError, match="unknown balancer"):
        Periodic("nope")
    with pytest.raises(ValueError, match="base"):
        Periodic(3)  # type: ignore[arg-type]


def test_hparams_rebuild_the_same_method() -> None:
    given = Periodic(make_balancer("cagrad", c=0.7), every=4)
    rebuilt = make_balancer("periodic", **given.hparams())
    assert isinstance(rebuilt, Periodic)
    assert rebuilt.hparams() == given.hparams()
    assert rebuilt.inner.hparams() == {"c": 0.7, "rescale": 1}

"""Accumulation with freed graphs: the surrogate losses carry the union batch's values and
per-task gradients (checked against one forward of the union, per-task autograd)."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask import HardSharing, Task, task_losses
from manytask.engine.accumulate import Accumulation, NotSeparable
from manytask.engine.gradients import feature_tensors, task_gradients

TASKS = [Task.classification("a", 3), Task.regression("b"), Task.binary("c")]


def _data(n: int = 24, size: int = 8) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    a = torch.randint(0, 3, (n,), generator=g)
    a[torch.rand(n, generator=g) < 0.4] = -1  # unequal labelled counts per micro-batch
    b = x[:, :1] + 0.1 * torch.randn(n, 1, generator=g)
    b[torch.rand(n, generator=g) < 0.3] = float("nan")
    c = (x[:, 1] > 0).float()
    return [(x[i: i + size], {"a": a[i: i + size], "b": b[i: i + size], "c": c[i: i + size]})
            for i in range(0, n, size)]


def _union(micro: list) -> tuple:
    return (torch.cat([m[0] for m in micro]),
            {t: torch.cat([m[1][t] for m in micro]) for t in micro[0][1]})


def _model() -> HardSharing:
    torch.manual_seed(0)
    return HardSharing(TASKS, 5, hidden=(16, 8))


def _accumulated(model: HardSharing, micro: list, kind: str) -> Accumulation:
    acc = Accumulation(kind, list(model.shared_parameters()))  # type: ignore[arg-type]
    for x, targets in micro:
        out, features = model(x, return_features=True)
        losses = task_losses(TASKS, out, targets)
        counts = {t.name: int(t.labelled(targets[t.name]).sum()) for t in TASKS
                  if t.name in losses}
        acc.add(losses, features, counts)
    return acc


@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_surrogates_have_the_union_batchs_losses_gramian_and_head_gradients(mode: str) -> None:
    model, micro = _model(), _data()
    acc = _accumulated(model, micro, mode)
    surrogate, features, counts = acc.surrogate([t.name for t in TASKS])
    x, targets = _union(micro)
    out, union_features = model(x, return_features=True)
    union = task_losses(TASKS, out, targets)
    assert counts == {t.name: int(t.labelled(targets[t.name]).sum()) for t in TASKS}
    for task, loss in union.items():
        torch.testing.assert_close(surrogate[task].detach(), loss.detach())
    shared = list(model.shared_parameters())
    got = task_gradients(list(surrogate.values()), features, mode=mode, shared_params=shared)
    want = task_gradients(list(union.values()), [union_features], mode=mode,
                          shared_params=shared)
    torch.testing.assert_close(got.gramian, want.gramian, rtol=1e-5, atol=1e-9)
    for task in union:  # each head: its own task's gradient of the union loss
        head = list(model.heads[task].parameters())
        torch.testing.assert_close(torch.autograd.grad(surrogate[task], head),
                                   torch.autograd.grad(union[task], head, retain_graph=True))


@pytest.mark.parametrize("method", ["upgrad", "mgda", "nash_mtl", "uncertainty"])
def test_backward_on_surrogates_writes_the_union_batchs_gradients(method: str) -> None:
    """Exact mode: what backward writes into the shared parameters and heads is final."""
    micro = _data()
    model, ref = _model(), _model()
    acc = _accumulated(model, micro, "exact")
    surrogate, features, counts = acc.surrogate([t.name for t in TASKS])
    names = [t.name for t in TASKS]
    mine, theirs = manytask.make_balancer(method, tasks=names), \
        manytask.make_balancer(method, tasks=names)
    manytask.backward(surrogate, mine, features=features, counts=counts,
                      shared_params=list(model.shared_parameters()))
    x, targets = _union(micro)
    out, union_features = ref(x, return_features=True)
    manytask.backward(task_losses(TASKS, out, targets), theirs, features=union_features,
                      shared_params=list(ref.shared_parameters()))
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg="the method's own parameters")


def test_loss_level_weights_are_the_objectives_derivative_times_the_share() -> None:
    model, micro = _model(), _data()
    with torch.no_grad():  # the loss level needs no graph in the first pass
        acc = _accumulated(model, micro, "losses")
    surrogate, features, counts = acc.surrogate([t.name for t in TASKS])
    assert features is None and all(s.is_leaf for s in surrogate.values())
    coef = {"a": 0.5, "b": 2.0, "c": -1.0}
    sum(coef[t] * s for t, s in surrogate.items()).backward()  # type: ignore[union-attr]
    for m, (_, targets) in enumerate(micro):
        for task, w in acc.loss_weights(m).items():
            n_m = int(next(t for t in TASKS if t.name == task).labelled(targets[task]).sum())
            assert w == pytest.approx(coef[task] * n_m / counts[task])


class _TiedHead(HardSharing):
    """Head "b" reads the trunk's first weight directly (as a tied embedding would)."""

    def forward(self, x, return_features=False):  # type: ignore[no-untyped-def]
        out, features = super().forward(x, return_features=True)
        first = next(self.shared.parameters())
        out = dict(out)
        out["b"] = out["b"] + first.sum()
        return (out, features) if return_features else out


def test_a_head_reading_a_trunk_parameter_is_not_separable() -> None:
    torch.manual_seed(0)
    model = _TiedHead(TASKS, 5, hidden=(16, 8))
    x, targets = _data()[0]
    out, features = model(x, return_features=True)
    losses = task_losses(TASKS, out, targets)
    counts = {t: 1 for t in losses}
    acc = Accumulation("exact", list(model.shared_parameters()))
    with pytest.raises(NotSeparable, match="reads a trunk parameter"):
        acc.add(losses, features, counts)
    assert feature_tensors(features)  # the features themselves were fine

"""A model's auxiliary losses in the Trainer: added to the objective outside the balancing of
the task losses, the same step as a hand-written loop, logged; a model without any is
trained as before."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

import manytask
from manytask import HardSharing, Task
from manytask.engine.backward import NonFiniteLossError
from manytask.tasks import task_losses
from manytask.training import Trainer

TASKS = [Task.classification("a", 3), Task.regression("b")]


class Penalised(HardSharing):
    """Hard sharing whose training forward also computes ``weight * mean(features^2)`` (a
    mean over examples, as MoA's routing loss), returned as the auxiliary loss ``name``."""

    def __init__(self, weight: float = 0.5, name: str = "pen", declared: tuple = ("pen",)):
        torch.manual_seed(0)
        super().__init__(TASKS, 5, hidden=(16, 8))
        self.weight, self.name, self.declared = weight, name, declared
        self.pending: dict[str, Tensor] = {}

    def features(self, x):
        feats = super().features(x)
        if self.training:
            self.pending = {self.name: self.weight * feats.pow(2).sum(1).mean()}
        return feats

    def auxiliary_loss_names(self):
        return self.declared

    def auxiliary_losses(self):
        out, self.pending = self.pending, {}
        return out


def _batches(n: int = 4, size: int = 8, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 5, generator=g)
        a = torch.randint(0, 3, (size,), generator=g)
        a[0] = -1  # a missing label
        out.append((x, {"a": a, "b": x[:, :1] * 2 + 0.1 * torch.randn(size, 1, generator=g)}))
    return out


def _own_loop(model, batches, balancer: str, mode: str, lr: float, with_aux: bool = True):
    """The documented own loop: the auxiliary loss backpropagated (graph kept), then
    ``manytask.backward`` on the task losses, then the optimiser's step."""
    method = manytask.make_balancer(balancer, tasks=[t.name for t in TASKS])
    params = [p for p in model.parameters() if p.requires_grad] + list(method.parameters())
    opt = torch.optim.Adam(params, lr=lr)  # the method's own parameters, as the Trainer's
    values = []
    model.train()
    for x, y in batches:
        outputs, features = model(x, return_features=True)
        losses = task_losses(TASKS, outputs, y)
        opt.zero_grad(set_to_none=True)
        aux = model.auxiliary_losses()
        if with_aux:
            total = torch.stack(list(aux.values())).sum()
            total.backward(retain_graph=True)
            values.append(float(total.detach()))
        manytask.backward(losses, method, features=features,
                          shared_params=list(model.shared_parameters()), mode=mode)
        opt.step()
    return values


@pytest.mark.parametrize("balancer,mode", [
    ("equal", "exact"), ("mgda", "exact"), ("mgda", "feature"), ("pcgrad", "exact"),
    ("uncertainty", "exact"),
])
def test_the_trainers_step_equals_the_hand_written_loop(balancer, mode):
    batches = _batches()
    own = Penalised()
    torch.manual_seed(1)  # pcgrad draws task orders
    values = _own_loop(own, batches, balancer, mode, lr=0.01)
    model = Penalised()
    trainer = Trainer(model, TASKS, manytask.make_balancer(balancer, tasks=["a", "b"]),
                      mode=mode, lr=0.01, progress=False)
    torch.manual_seed(1)
    rows = [trainer.train_step(b) for b in batches]
    for (name, got), want in zip(model.state_dict().items(), own.state_dict().values(),
                                 strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
    assert [r["aux/pen"] for r in rows] == pytest.approx(values, rel=1e-6)
    assert not torch.equal(model.state_dict()["shared.0.weight"],
                           Penalised().state_dict()["shared.0.weight"])


def test_the_auxiliary_gradient_is_added_outside_the_balancing():
    """With MGDA the weights are those of the task losses alone, and the gradient is the
    one without the auxiliary loss plus the auxiliary loss's own gradient."""
    x, y = _batches(1)[0]
    grads, weights = [], []
    for with_aux in (True, False):
        model = Penalised().train()
        outputs, features = model(x, return_features=True)
        aux = model.auxiliary_losses()["pen"]
        aux_grad = torch.autograd.grad(aux, list(model.parameters()), retain_graph=True,
                                       allow_unused=True)
        if with_aux:
            aux.backward(retain_graph=True)
        result = manytask.backward(task_losses(TASKS, outputs, y), manytask.make_balancer("mgda"),
                                   features=features, shared_params=list(model.shared_parameters()))
        grads.append([p.grad.clone() for p in model.parameters()])
        weights.append(result.weights)
    assert weights[0] == weights[1]
    for g_with, g_without, g_aux in zip(*grads, aux_grad, strict=True):
        expected = g_without + (g_aux if g_aux is not None else 0)
        torch.testing.assert_close(g_with, expected, rtol=1e-5, atol=1e-7)
    assert any(g is not None and g.abs().sum() > 0 for g in aux_grad)


def test_a_model_without_auxiliary_losses_is_trained_as_before(tmp_path):
    batches = _batches()
    own = Penalised(declared=())
    _own_loop(own, batches, "mgda", "exact", lr=0.01, with_aux=False)
    plain = Penalised(declared=())
    plain.features = HardSharing.features.__get__(plain)  # no auxiliary loss computed at all
    trainer = Trainer(plain, TASKS, "mgda", lr=0.01, progress=False, run_dir=tmp_path / "r",
                      log_every=1)
    history = trainer.fit(batches, 1)
    for (name, got), want in zip(plain.state_dict().items(), own.state_dict().values(),
                                 strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
    assert "aux" not in history[0]
    with open(tmp_path / "r" / "steps.csv") as f:
        assert not [c for c in next(csv.reader(f)) if c.startswith("aux/")]


def test_auxiliary_losses_are_logged_per_step_and_per_epoch(tmp_path):
    batches = _batches()
    trainer = Trainer(Penalised(), TASKS, "equal", lr=0.01, progress=False,
                      run_dir=tmp_path / "r", log_every=1)
    history = trainer.fit(batches, 2)
    with open(tmp_path / "r" / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(float(r["aux/pen"]) > 0 for r in rows)
    for epoch in (0, 1):
        mean = sum(float(r["aux/pen"]) for r in rows[4 * epoch: 4 * epoch + 4]) / 4
        assert history[epoch]["aux"]["pen"] == pytest.approx(mean, rel=1e-6)


def test_accumulated_micro_batches_average_the_auxiliary_loss():
    """A mean over examples: two equal halves accumulated equal the whole batch."""
    whole = _batches(3, size=8)
    for b in whole:  # every half has labels of both tasks
        b[1]["a"][4] = 1
    halves = [(x[i:i + 4], {k: v[i:i + 4] for k, v in y.items()})
              for x, y in whole for i in (0, 4)]
    small = Trainer(Penalised(), TASKS, "equal", lr=0.01, progress=False, accumulate=2)
    large = Trainer(Penalised(), TASKS, "equal", lr=0.01, progress=False)
    small_rows = [small.train_step(halves[i:i + 2]) for i in range(0, 6, 2)]
    large_rows = [large.train_step(b) for b in whole]
    for got, want in zip(small_rows, large_rows, strict=True):
        assert got["aux/pen"] == pytest.approx(want["aux/pen"], rel=1e-5)
    for (name, got), want in zip(small.model.state_dict().items(),
                                 large.model.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_a_non_finite_auxiliary_loss_is_refused_or_skipped():
    batch = _batches(1)[0]
    model = Penalised(weight=math.inf)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="aux/pen"):
        Trainer(model, TASKS, "equal", progress=False).train_step(batch)
    trainer = Trainer(model, TASKS, "equal", progress=False, skip_nonfinite=True)
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert trainer.train_step(batch) is None
    assert trainer.skipped_steps == 1
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_undeclared_auxiliary_loss_and_flat_regions_are_refused():
    batch = _batches(1)[0]
    with pytest.raises(ValueError, match="'other', not among its auxiliary_loss_names"):
        Trainer(Penalised(name="other"), TASKS, "equal", progress=False).train_step(batch)
    with pytest.raises(ValueError, match=r"flat_rho .* auxiliary losses"):
        Trainer(Penalised(), TASKS, "mgda", flat_rho=0.05, progress=False)


def test_unused_path_is_not_created(tmp_path: Path):
    """A refused trainer writes nothing."""
    with pytest.raises(ValueError):
        Trainer(Penalised(), TASKS, "mgda", flat_rho=0.05, progress=False,
                run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()

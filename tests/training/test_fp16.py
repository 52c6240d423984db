"""fp16: the gradient scaler's scale is removed before the method decides; an overflow skips
the step without touching the method's state."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask import HardSharing, Task
from manytask.balancers import MGDA
from manytask.engine.backward import GradientOverflowError, backward
from manytask.tasks import task_losses
from manytask.training import Trainer

TASKS = [Task.classification("a", 3), Task.regression("b"), Task.binary("c")]


class Recording(MGDA):
    """MGDA that keeps what it was given."""

    def decide(self, losses, tasks, gramian):
        self.seen = (losses.detach().clone(), gramian.clone())
        return super().decide(losses, tasks, gramian)


def _batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, {"a": torch.randint(0, 3, (n,), generator=g), "b": x[:, :1] * 2,
               "c": (x[:, 1] > 0).float()}


@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_the_method_sees_the_float32_gramian_and_the_grads_stay_scaled(mode: str) -> None:
    scale = 2.0**16
    got = {}
    for s in (1.0, scale):
        torch.manual_seed(0)
        model = HardSharing(TASKS, 5, hidden=(16,))
        x, y = _batch()
        out, feats = model(x, return_features=True)
        losses = {k: v * s for k, v in task_losses(TASKS, out, y).items()}
        method = Recording()
        result = backward(losses, method, features=feats, shared_params=list(
            model.shared_parameters()), mode=mode, loss_scale=s)
        got[s] = (method.seen, result, [p.grad.clone() for p in model.parameters()])
    (l1, g1), r1, grads1 = got[1.0]
    (ls, gs), rs, gradss = got[scale]
    torch.testing.assert_close(ls, l1, rtol=1e-6, atol=0)
    torch.testing.assert_close(gs, g1, rtol=1e-5, atol=1e-12)  # same Gramian, up to rounding
    assert rs.weights == pytest.approx(r1.weights, rel=1e-5)
    assert rs.losses == pytest.approx(r1.losses, rel=1e-6)
    for a, b in zip(grads1, gradss, strict=True):
        torch.testing.assert_close(b / scale, a, rtol=1e-5, atol=1e-8)


class Overflowing(torch.autograd.Function):
    """The identity forward; an infinite gradient backward (an fp16 overflow)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * float("inf")


def test_an_overflow_is_refused_before_the_method_decides() -> None:
    torch.manual_seed(0)
    model = HardSharing(TASKS, 5, hidden=(16,))
    x, y = _batch()
    out, feats = model(x, return_features=True)
    losses = task_losses(TASKS, out, y)
    # a finite loss whose (scaled) gradient overflowed, as in fp16
    losses["a"] = Overflowing.apply(losses["a"])
    method = Recording()
    with pytest.raises(GradientOverflowError):
        backward(losses, method, features=feats, shared_params=list(model.shared_parameters()),
                 loss_scale=1e30)
    assert not hasattr(method, "seen")


def test_fp16_training_skips_overflowed_steps_and_keeps_the_methods_state() -> None:
    torch.manual_seed(0)
    model = HardSharing(TASKS, 5, hidden=(16,))
    trainer = Trainer(model, TASKS, manytask.make_balancer("gradvac"), precision="fp16",
                      progress=False, lr=0.01)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows in fp16
    before_state = {k: v.clone() for k, v in trainer.balancer.state_dict().items()}
    before = [p.detach().clone() for p in model.parameters()]
    row = trainer.train_step(_batch())
    assert row is None and trainer.overflow_steps == 1 and trainer.step == 0
    for k, v in trainer.balancer.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    assert trainer.scaler.get_scale() == 2.0**59
    data = [_batch(16, s) for s in range(30)]
    trainer.fit(data, 2)  # backs off until the steps fit in fp16, then trains
    assert trainer.step > 0 and trainer.step + trainer.overflow_steps == 61
    assert all(torch.isfinite(p).all() for p in model.parameters())

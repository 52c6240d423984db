"""Every registered balancer trains through batches that lack a task, or some labels."""

from __future__ import annotations

import math

import pytest
import torch

import manytask
from manytask import HardSharing, Task, Trainer

TASKS = [Task.classification("a", 3), Task.regression("b"), Task.binary("c")]


def _batches(n_batches: int = 8, size: int = 12):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n_batches):
        x = torch.randn(size, 5, generator=g)
        targets = {
            "a": torch.randint(0, 3, (size,), generator=g),
            "b": torch.randn(size, 1, generator=g),
            "c": (x[:, 0] > 0).float(),
        }
        targets["a"][: size // 3] = -1  # some samples unlabelled for a
        targets["c"][size // 2 :] = math.nan  # and for c
        absent = ["a", "b", "c", None][i % 4]
        if absent:
            del targets[absent]  # a whole task missing from this batch
        out.append((x, targets))
    return out


@pytest.mark.parametrize("name", [n for n in manytask.available() if n != "fixed"])
@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_balancer_handles_absent_tasks_and_missing_labels(name: str, mode: str) -> None:
    torch.manual_seed(0)
    model = HardSharing(TASKS, 5, hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, TASKS, name, mode=mode, progress=False, log_every=1)
    trainer.fit(_batches(), 2)
    assert trainer.step == 16 and trainer.skipped_steps == 0
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)

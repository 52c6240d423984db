"""MultiTab-Net, APEM and DTRN train with a gradient-level balancer in both modes."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask.data.multitab_bench import multitab_bench
from manytask.models import make_model

SIZES = {
    "multitab": {"d_token": 8, "n_heads": 2, "n_layers": 1, "ff_hidden": 16, "mask": "fxt_txt"},
    "apem": {"d_field": 8, "n_heads": 2, "n_layers": 1, "ff_hidden": 16},
    "dtrn": {"d_field": 4, "n_experts": 3, "expert_hidden": (16,)},
}


@pytest.mark.parametrize("mode", ["exact", "feature"])
@pytest.mark.parametrize("arch", SIZES)
def test_loss_decreases_with_mgda(arch: str, mode: str) -> None:
    data = multitab_bench(256, 3, 0.5, n_features=6, complexity=1, seed=0)
    tasks = list(data.tasks)
    model = make_model(arch, tasks, in_features=6, **SIZES[arch])
    balancer = manytask.make_balancer("mgda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    shared = list(model.shared_parameters())
    x, targets = data.x, data.targets

    def total() -> float:
        with torch.no_grad():
            return sum(float(v) for v in manytask.task_losses(tasks, model(x), targets).values())

    start = total()
    for _ in range(25):
        outputs, feats = model(x, return_features=True)
        losses = manytask.task_losses(tasks, outputs, targets)
        opt.zero_grad()
        result = manytask.backward(
            losses, balancer, features=feats, shared_params=shared, mode=mode
        )
        opt.step()
    assert sum(result.weights.values()) == pytest.approx(1.0, abs=1e-6)  # MGDA: on the simplex
    assert total() < 0.7 * start

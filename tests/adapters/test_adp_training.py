"""Adapter models under manytask.backward (gradient-level balancers) and the Trainer."""

from __future__ import annotations

import pytest
import torch
from helpers_adapters import TASKS, batch, build, randomise

import manytask
from manytask.data.text import MixedTaskBatches, stacked_batches
from manytask.tasks import task_losses
from manytask.training.trainer import Trainer


def _targets(x):
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (x["task_ids"].shape[0],), generator=g)
    return {t.name: torch.where(x["task_ids"] == k, y, -1) for k, t in enumerate(TASKS)}


@pytest.mark.parametrize("mode", ["exact", "feature"])
@pytest.mark.parametrize("name", ["mtl_lora", "poly"])
def test_gradient_balancer_fills_the_weighted_sum_of_task_gradients(name, mode):
    model = build(name)
    randomise(model, scale=0.2)
    model.eval()  # deterministic routing, so the reference gradients see the same graph
    x = batch(n=9)
    targets = _targets(x)
    params = list(model.adapter_parameters().values())
    outputs, features = model(x, return_features=True)
    losses = task_losses(TASKS, outputs, targets)
    reference = [torch.autograd.grad(losses[t.name], params, retain_graph=True,
                                     allow_unused=True) for t in TASKS]
    shared = list(model.shared_parameters())
    assert shared and len(shared) < len(params)  # the task-specific part is left out
    result = manytask.backward(losses, manytask.make_balancer("mgda"), features=features,
                               shared_params=shared, mode=mode)
    weights = [result.weights[t.name] for t in TASKS]
    assert abs(sum(weights) - 1) < 1e-5 and result.gramian is not None
    for i, p in enumerate(params):
        expected = sum(w * (g[i] if g[i] is not None else 0) for w, g in
                       zip(weights, reference, strict=True))
        torch.testing.assert_close(p.grad, expected * torch.ones_like(p), atol=1e-6,
                                   rtol=1e-4)


def test_auxiliary_loss_in_a_user_loop_with_a_gradient_balancer():
    model = build("align_lora", align_weight=0.1)
    randomise(model, scale=0.2)
    model.train()
    x = batch(n=12)
    outputs, features = model(x, return_features=True)
    losses = task_losses(TASKS, outputs, _targets(x))
    aux = model.auxiliary_loss()
    assert aux is not None and float(aux.detach()) > 0
    a = next(iter(model.adapted.layers.values())).delta.lora_A
    aux_grad = torch.autograd.grad(aux, a, retain_graph=True)[0]
    aux.backward(retain_graph=True)
    torch.testing.assert_close(a.grad, aux_grad)
    manytask.backward(losses, manytask.make_balancer("pcgrad"), features=features,
                      shared_params=list(model.shared_parameters()))
    assert not torch.allclose(a.grad, aux_grad)  # the tasks' part was added to it


def test_trainer_trains_a_lora_adapter_model(tmp_path):
    torch.manual_seed(0)
    model = build("lora", r=4)
    n = 24
    feats, labels = {}, {}
    for k, task in enumerate(TASKS):
        ids = torch.randint(1, 60, (n, 8))
        ids[:, 0] = 10 * k  # an easy, learnable signal per task
        feats[task.name] = {"input_ids": ids, "attention_mask": torch.ones(n, 8, dtype=torch.long),
                            "task_ids": torch.full((n, 1), k)}
        labels[task.name] = (ids[:, 1] % 3).long()
    train = MixedTaskBatches(feats, labels, batch_size=12, tasks_per_batch=3, steps=4, seed=0)
    val = stacked_batches(feats, labels, batch_size=36)
    trainer = Trainer(model, TASKS, "cagrad", lr=1e-2, progress=False, log_every=1)
    before = {k: v.detach().clone() for k, v in model.adapter_parameters().items()}
    history = trainer.fit(train, epochs=2, val_data=val)
    assert len(history) == 2
    changed = [k for k, v in model.adapter_parameters().items() if not torch.equal(v, before[k])]
    assert changed and all(".delta." in k for k in changed)
    for name, p in model.adapted.base.named_parameters():
        if ".delta." not in name:
            assert p.grad is None, name

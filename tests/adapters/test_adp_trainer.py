"""Align-LoRA's alignment loss and MoA's routing loss under the Trainer: the step of the
documented own loop, and the routing loss doing its job (the router learns the tasks)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_adapters import TASKS, batch, build, randomise

import manytask
from manytask.adapters.layer import masked_mean
from manytask.adapters.mixtures import MoaDelta
from manytask.tasks import task_losses
from manytask.training.trainer import Trainer


def _targets(x, seed=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (x["task_ids"].shape[0],), generator=g)
    return {t.name: torch.where(x["task_ids"] == k, y, -1) for k, t in enumerate(TASKS)}


def _own_step(model, opt, method, x, y, mode):
    """The loop docs/adapters.md describes for these methods."""
    outputs, features = model(x, return_features=True)
    losses = task_losses(TASKS, outputs, y)
    opt.zero_grad(set_to_none=True)
    aux = model.auxiliary_loss()
    aux.backward(retain_graph=True)
    manytask.backward(losses, method, features=features,
                      shared_params=list(model.shared_parameters()), mode=mode)
    opt.step()
    return float(aux.detach())


@pytest.mark.parametrize("name,params,aux_name", [
    ("align_lora", {"align_weight": 0.5}, "align"), ("moa", {}, "route")])
@pytest.mark.parametrize("balancer,mode", [("equal", "exact"), ("mgda", "exact"),
                                           ("mgda", "feature")])
def test_trainer_step_equals_the_own_loop(name, params, aux_name, balancer, mode):
    model = build(name, **params)
    randomise(model, scale=0.2)
    own = copy.deepcopy(model).train()
    names = [t.name for t in TASKS]
    trainer = Trainer(model, TASKS, manytask.make_balancer(balancer, tasks=names), mode=mode,
                      lr=1e-2, progress=False)
    assert trainer.aux_names == (aux_name,)
    opt = torch.optim.Adam([p for p in own.parameters() if p.requires_grad], lr=1e-2)
    method = manytask.make_balancer(balancer, tasks=names)
    for step in range(3):
        x = batch(seed=10 + step, n=12)
        y = _targets(x, seed=step)
        torch.manual_seed(step)  # the same dropout draws in both
        value = _own_step(own, opt, method, x, y, mode)
        torch.manual_seed(step)
        row = trainer.train_step((x, y))
        assert row is not None and row[f"aux/{aux_name}"] == pytest.approx(value, rel=1e-6)
        assert value > 0
    for (key, got), want in zip(model.state_dict().items(), own.state_dict().values(),
                                strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=key)
    changed = model.adapter_parameters()
    assert any(not torch.equal(p, build(name, **params).adapter_parameters()[k])
               for k, p in changed.items())


def _toy(n_per_task, seed):
    """Task k's sentences use tokens 20k..20k+19 only: the task is readable from the input."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(20 * k, 20 * k + 20, (n_per_task, 8), generator=g)
                     for k in range(len(TASKS))])
    tasks = torch.arange(len(TASKS)).repeat_interleave(n_per_task)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "task_ids": tasks}
    y = (ids[:, 0] % 3).long()
    return x, {t.name: torch.where(tasks == k, y, -1) for k, t in enumerate(TASKS)}


def _router_error(model, x):
    """Over the adapted layers: how often a layer's router picks another LoRA than the
    example's task (evaluation mode)."""
    errors = []

    def hook(module, args, _out):
        inp, _, ctx = args
        logits = module.router(masked_mean(inp.to(module.router.weight.dtype), ctx.mask))
        errors.append((logits.argmax(-1) != ctx.tasks).float().mean())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MoaDelta)]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(errors) == 4  # query and value of two layers
    return float(torch.stack(errors).mean())


def test_the_routing_loss_teaches_moas_router_the_tasks():
    train = [_toy(4, seed) for seed in range(30)]
    held_out = _toy(20, 99)[0]
    errors = {}
    for weight in (1.0, 0.0):
        torch.manual_seed(0)
        model = build("moa", route_weight=weight)
        errors["start"] = _router_error(model, held_out)
        trainer = Trainer(model, TASKS, "equal", lr=2e-2, progress=False)
        history = trainer.fit(train, 2)
        assert ("aux" in history[0]) == (weight > 0)
        errors[weight] = _router_error(model, held_out)
    assert errors["start"] > 0.6  # a zero router: ties, every example routed to LoRA 0
    # the task losses alone leave the router untrained (zero LoRA B: no gradient at first)
    assert errors[1.0] < 0.25 and errors[0.0] > 0.5

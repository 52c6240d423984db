"""Each method's defining property, checked against its paper's equation."""

from __future__ import annotations

import pytest
import torch
from helpers_adapters import TASKS, batch, build, randomise

from manytask.adapters.layer import Context
from manytask.adapters.lora import symmetric_kl


def _ctx(x, model):
    return Context(tasks=x["task_ids"], mask=x["attention_mask"])


def _delta(model):
    return next(iter(model.adapted.layers.values())).delta


def test_routers_weights_lie_on_the_simplex():
    x = batch()
    hidden = torch.randn(6, 9, 16)
    for name, params in (("moa", {}), ("mor1e", {"top_k": 2}), ("mor1e", {}), ("poly", {}),
                         ("mhr", {})):
        model = build(name, **params)
        randomise(model)
        delta = _delta(model)
        for training in (True, False):
            delta.train(training)
            if name == "moa":
                w = delta.weights(hidden, x["attention_mask"])[1]
            elif name == "mor1e":
                w = delta.weights(hidden, _ctx(x, model))
            else:
                w = delta.routing(x["task_ids"])
            assert (w >= 0).all(), name
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-6, rtol=0)
            if params.get("top_k"):
                assert ((w > 0).sum(-1) <= 2).all()
    mtl = build("mtl_lora")
    randomise(mtl)
    w = _delta(mtl).mixing(x["task_ids"])
    torch.testing.assert_close(w.sum(-1), torch.ones(6))


TASK_SPECIFIC = {
    "lora_per_task": ["task_A", "task_B"],
    "mtl_lora": ["task_lambda", "task_weights"],
    "poly": ["task_logits"],
    "mhr": ["task_logits"],
    "scalearn": ["task_scale"],
    "hyperx": ["task_embedding.weight"],
    "mpt": ["task_u", "task_v"],
    "task_prompt_vectors": ["task_prompts"],
}


def _task_slices(name, param_name, shape, task):
    """Index of task ``task``'s part of a task-specific tensor."""
    if param_name == "task_A":
        r = shape[0] // len(TASKS)
        return (slice(task * r, (task + 1) * r),)
    if param_name == "task_B":
        r = shape[1] // len(TASKS)
        return (slice(None), slice(task * r, (task + 1) * r))
    return (task,)


@pytest.mark.parametrize("name", sorted(TASK_SPECIFIC))
def test_task_parameters_get_gradient_only_from_their_tasks_examples(name):
    model = build(name)
    randomise(model)
    model.train()
    x = batch()
    keep = x["task_ids"] == 1  # a loss on task 1's examples only
    features = model.adapted(x)
    (features[keep] ** 2).sum().backward()
    checked = 0
    for pname, p in model.adapted.named_parameters():
        if not any(pname.endswith(s) for s in TASK_SPECIFIC[name]):
            continue
        assert p.grad is not None, pname
        for task in range(len(TASKS)):
            part = p.grad[_task_slices(name, pname.rsplit(".", 1)[-1], p.shape, task)]
            if task == 1:
                assert part.abs().sum() > 0, pname
            else:
                assert part.abs().sum() == 0, (pname, task)
        checked += 1
    assert checked


@pytest.mark.parametrize("uniform", [True, False])
def test_scalearn_with_one_hot_scaling_equals_the_chosen_source(uniform):
    sources = build("lora_per_task")
    randomise(sources)
    scalearn = build("scalearn", uniform=uniform)
    scalearn.method.load_sources(sources.adapted.layers)
    chosen = [2, 0, 1]  # task t reads source chosen[t]
    with torch.no_grad():
        for layer in scalearn.adapted.layers.values():
            onehot = torch.nn.functional.one_hot(torch.tensor(chosen), 3).float()
            scale = layer.delta.task_scale
            scale.copy_(onehot if uniform else onehot[:, :, None].expand_as(scale))
    x = batch()
    with torch.no_grad():
        ours = scalearn.adapted.hidden_states(x)[0]
        x_src = dict(x, task_ids=torch.tensor(chosen)[x["task_ids"]])
        theirs = sources.adapted.hidden_states(x_src)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_mpt_task_prompt_is_the_shared_prompt_times_a_rank_one_matrix():
    model = build("mpt", length=5)
    randomise(model)
    method = model.method
    x = batch()
    prompts = method.prompt(_ctx(x, model))
    for i, t in enumerate(x["task_ids"].tolist()):
        expected = method.shared_prompt * torch.outer(method.task_u[t], method.task_v[t])
        torch.testing.assert_close(prompts[i], expected)
        ratio = (prompts[i].double() / method.shared_prompt.double()).detach()
        assert torch.linalg.matrix_rank(ratio, rtol=1e-5) == 1
    # the prompt really is what the base reads: a changed task_v changes that task's output
    with torch.no_grad():
        before = model.adapted(x)
        method.task_v[0].mul_(2)
        after = model.adapted(x)
    changed = (before - after).abs().sum(-1) > 0
    assert changed.tolist() == (x["task_ids"] == 0).tolist()


def test_hyperx_same_embeddings_give_the_same_adapter_and_unseen_pairs_get_one():
    model = build("hyperx", n_languages=2)
    randomise(model)
    method = model.method
    with torch.no_grad():
        method.task_embedding.weight[2] = method.task_embedding.weight[0]
    tasks, langs = torch.tensor([0, 2, 1, 0]), torch.tensor([1, 1, 1, 0])
    down, up = method.generate(tasks, langs, 0)
    torch.testing.assert_close(down[0], down[1])  # equal embeddings: one adapter
    torch.testing.assert_close(up[0], up[1])
    assert not torch.allclose(down[0], down[2])   # another task: another adapter
    assert not torch.allclose(down[0], down[3])   # another language: another adapter
    again = method.generate(tasks, langs, 0)
    torch.testing.assert_close(again[0], down)
    # a pair never seen together (task 1, language 1) gets an adapter that changes the output
    x = batch()
    x["languages"] = torch.ones(6, dtype=torch.long)
    with torch.no_grad():
        with_lang = model.adapted(x)
        x["languages"] = torch.zeros(6, dtype=torch.long)
        without = model.adapted(x)
    assert (with_lang - without).abs().max() > 0


def test_task_prompt_vectors_are_tuned_minus_initial_and_add_up():
    model = build("task_prompt_vectors", length=4)
    method = model.method
    init = method.initial_prompt.clone()
    with torch.no_grad():
        method.task_prompts.add_(torch.randn_like(method.task_prompts))
    vectors = method.vectors()
    torch.testing.assert_close(vectors, method.task_prompts.detach() - init)
    combined = method.arithmetic({0: 1.0, 2: 0.5})
    torch.testing.assert_close(combined, init + vectors[0] + 0.5 * vectors[2])
    torch.testing.assert_close(method.arithmetic(torch.zeros(3)), init)


def test_mtl_lora_increment_is_its_equation():
    model = build("mtl_lora")
    randomise(model)
    delta = _delta(model)
    x = torch.randn(3, 4, 16)
    ctx = Context(tasks=torch.tensor([0, 1, 2]), mask=torch.ones(3, 4))
    out = delta(x, None, ctx)
    for i in range(3):
        t = int(ctx.tasks[i])
        w = torch.softmax(delta.task_weights[t] / delta.temperature, 0)
        bs = delta.lora_B.view(16, delta.n_up, delta.r)
        expected = sum(w[j] * (bs[:, j] @ delta.task_lambda[t] @ delta.lora_A @ x[i].T).T
                       for j in range(delta.n_up))
        torch.testing.assert_close(out[i], delta.scale * expected, atol=1e-5, rtol=1e-5)


def test_symmetric_kl_is_the_gaussian_kl():
    from torch.distributions import Normal, kl_divergence

    a, b = torch.randn(50, 3).double(), (torch.randn(60, 3) * 2 + 1).double()
    pa = Normal(a.mean(0), a.var(0).sqrt())
    pb = Normal(b.mean(0), b.var(0).sqrt())
    expected = 0.5 * (kl_divergence(pa, pb) + kl_divergence(pb, pa)).sum()
    torch.testing.assert_close(symmetric_kl(a, b, eps=0), expected)
    assert symmetric_kl(a, a.clone()) < 1e-10


def test_auxiliary_losses_must_be_taken():
    for name in ("align_lora", "moa"):
        model = build(name)
        randomise(model)
        model.train()
        x = batch()
        model(x)
        aux = model.auxiliary_loss()
        assert aux is not None and aux.requires_grad and torch.isfinite(aux)
        model(x)
        with pytest.raises(RuntimeError, match="auxiliary loss"):
            model(x)


def test_moa_routing_loss_trains_the_router_towards_the_task():
    model = build("moa")
    randomise(model, scale=0.05)
    model.train()
    x = batch(n=12)
    params = [p for n, p in model.adapted.named_parameters() if "router" in n]
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        model(x)
        model.auxiliary_loss().backward()
        opt.step()
    model.eval()
    delta = _delta(model)
    # the first layer's router reads the embeddings: it should now pick each example's task
    with torch.no_grad():
        emb = model.adapted.base.embeddings(input_ids=x["input_ids"])
        w = delta.weights(emb, x["attention_mask"])[1]
    assert (w.argmax(-1) == x["task_ids"]).float().mean() >= 0.9

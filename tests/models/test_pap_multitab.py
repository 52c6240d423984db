"""MultiTab-Net: each attention-mask variant forbids exactly what it says, checked by brute
force on the mask, by perturbing forbidden tokens, and by gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from manytask import Task
from manytask.models import make_model
from manytask.models.inputs import TabularInput
from manytask.models.multitab import MASK_VARIANTS, MultiTabNet, multitask_mask
from manytask.tabular_types import TabularX

TASKS = [Task.regression("a"), Task.binary("b"), Task.classification("c", 3)]


def encoder(model: MultiTabNet) -> Any:
    return model.shared


def allowed(variant: str, n_tasks: int, q: int, k: int) -> bool:
    """The variant's rule, spelled out per pair (tokens: tasks first)."""
    q_task, k_task = q < n_tasks, k < n_tasks
    if q == k:
        return True
    if variant in ("txt", "fxt_txt") and q_task and k_task:
        return False
    return not (variant in ("fxt", "fxt_txt") and not q_task and k_task)


@pytest.mark.parametrize("variant", MASK_VARIANTS)
def test_mask_matrix_matches_the_rule_pair_by_pair(variant: str) -> None:
    mask = multitask_mask(3, 4, variant)
    for q in range(7):
        for k in range(7):
            assert bool(mask[q, k]) == (not allowed(variant, 3, q, k)), (q, k)


@pytest.mark.parametrize("variant", MASK_VARIANTS)
def test_attention_weights_are_zero_where_the_mask_forbids(variant: str) -> None:
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, n_layers=2, mask=variant)
    model(torch.randn(6, 5))
    mask = multitask_mask(3, 5, variant)
    for block in encoder(model).blocks:
        attn = block.attention.last_attention  # (batch, heads, L, L)
        assert bool((attn[:, :, mask] == 0).all())
        assert bool((attn[:, :, ~mask] > 0).all())
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))


def perturb_task_token(model: MultiTabNet, j: int) -> None:
    with torch.no_grad():
        encoder(model).task_tokens[j] += torch.randn_like(encoder(model).task_tokens[j])


@pytest.mark.parametrize(("variant", "n_layers"), [("fxt_txt", 1), ("fxt_txt", 3), ("txt", 1)])
def test_task_token_cannot_see_another_task_token_where_forbidden(
    variant: str, n_layers: int
) -> None:
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, n_layers=n_layers, mask=variant)
    x = torch.randn(6, 5)
    _, before = model(x, return_features=True)
    perturb_task_token(model, 1)  # task "b"
    _, after = model(x, return_features=True)
    torch.testing.assert_close(after["a"], before["a"])
    torch.testing.assert_close(after["c"], before["c"])
    assert not torch.allclose(after["b"], before["b"])


@pytest.mark.parametrize("variant", ["none", "fxt"])
def test_without_txt_a_task_token_sees_the_others(variant: str) -> None:
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, n_layers=1, mask=variant)
    x = torch.randn(6, 5)
    _, before = model(x, return_features=True)
    perturb_task_token(model, 1)
    _, after = model(x, return_features=True)
    assert not torch.allclose(after["a"], before["a"])


def test_txt_alone_leaks_through_features_from_the_second_block() -> None:
    # Task b -> feature tokens (allowed under "txt") -> task a at the next block.
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, n_layers=2, mask="txt")
    x = torch.randn(6, 5)
    _, before = model(x, return_features=True)
    perturb_task_token(model, 1)
    _, after = model(x, return_features=True)
    assert not torch.allclose(after["a"], before["a"])


@pytest.mark.parametrize(
    ("variant", "isolated"), [(v, v in ("fxt", "fxt_txt")) for v in MASK_VARIANTS]
)
def test_feature_tokens_ignore_task_tokens_exactly_under_fxt(variant: str, isolated: bool) -> None:
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, n_layers=3, mask=variant)
    x = torch.randn(6, 5)
    before = encoder(model).tokens(x)[:, 3:]
    perturb_task_token(model, 0)
    after = encoder(model).tokens(x)[:, 3:]
    assert torch.allclose(after, before) == isolated


@pytest.mark.parametrize("variant", MASK_VARIANTS)
def test_gradients_flow_only_where_the_mask_allows(variant: str) -> None:
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, n_layers=2, mask=variant)
    outputs = model(torch.randn(6, 5))
    tokens = encoder(model).task_tokens
    for i, task in enumerate(["a", "b", "c"]):
        (grad,) = torch.autograd.grad(outputs[task].sum(), tokens, retain_graph=True)
        assert bool(grad[i].abs().sum() > 0)  # every task reads its own token
        others = torch.cat([grad[:i], grad[i + 1 :]])
        # Only "fxt_txt" cuts every path at depth 2 ("txt" leaks through the features).
        assert bool((others == 0).all()) == (variant == "fxt_txt")
    dense = torch.randn(6, 5, requires_grad=True)
    out = model(dense)
    (g,) = torch.autograd.grad(out["a"].sum(), dense)
    assert bool((g.abs().sum(0) > 0).all())  # every feature reaches every task


def test_single_task_token_is_shared_by_all_towers() -> None:
    model = MultiTabNet(TASKS, 5, d_token=8, n_heads=2, task_tokens="single")
    _, feats = model(torch.randn(4, 5), return_features=True)
    assert feats["a"] is feats["b"] is feats["c"]
    assert encoder(model).task_tokens.shape == (1, 8)


def test_inter_sample_attention_makes_rows_depend_on_their_batch() -> None:
    x = torch.randn(5, 4)
    y = x.clone()
    y[1:] += 1.0  # change every row but the first
    for inter_sample in (False, True):
        model = MultiTabNet(TASKS, 4, d_token=8, n_heads=2, n_layers=1, inter_sample=inter_sample)
        same = torch.allclose(model(x)["a"][0], model(y)["a"][0])
        assert same == (not inter_sample)


def test_categorical_tokens_from_a_tabular_input_of_other_widths() -> None:
    layer = TabularInput([4, 6, 3], n_dense=2, embedding_dim=[4, 8, 4])
    model = make_model("multitab", TASKS, input_layer=layer, d_token=8, n_heads=2)
    x = TabularX(torch.tensor([[1, 5, 2], [3, 0, 0]]), torch.randn(2, 2))
    out = model(x)
    assert out["c"].shape == (2, 3)
    assert encoder(model).tokenizer.n_fields == 5
    # The width-8 column needs no projection, the width-4 columns do.
    kinds = [type(p).__name__ for p in encoder(model).tokenizer.projections]
    assert kinds == ["Linear", "Identity"]
    with pytest.raises(ValueError, match="codes"):
        model(TabularX(torch.tensor([[4, 0, 0]]), torch.randn(1, 2)))
    with pytest.raises(ValueError, match="dense features"):
        model(TabularX(torch.tensor([[1, 0, 0]]), torch.randn(1, 3)))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="mask"):
        MultiTabNet(TASKS, 4, mask="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        MultiTabNet(TASKS, 4, d_token=10, n_heads=4)
    with pytest.raises(TypeError, match="TabularInput"):
        MultiTabNet(TASKS, input_layer=torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="in_features"):
        MultiTabNet(TASKS)

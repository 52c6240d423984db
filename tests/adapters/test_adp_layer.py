"""The adapter layer: targeting as PEFT targets, a frozen base, zero-initialised adapters."""

from __future__ import annotations

import pytest
import torch
from helpers_adapters import LAYER_METHODS, TASKS, batch, build, tiny

from manytask.adapters import ADAPTERS, AdapterModel, matches


def test_names_match_as_peft_matches():
    name = "encoder.layer.0.attention.self.query"
    assert matches(name, ["query"])
    assert matches(name, [name])
    assert not matches(name, ["uery"])  # a suffix must start at a dot
    assert not matches(name, ["self"])
    assert matches(name, r".*\.0\..*query")  # a string is a full-match pattern
    assert not matches(name, r"query")


def test_peft_agrees_on_which_modules_are_targeted():
    peft_utils = pytest.importorskip("peft.tuners.tuners_utils")
    from peft import LoraConfig

    base = tiny("bert")
    names = [n for n, _ in base.named_modules() if n]
    for targets in (["query", "value"], ["dense"], ["attention.output.dense"], r".*1\.output\..*"):
        config = LoraConfig(target_modules=targets)
        theirs = {n for n in names if peft_utils.check_target_module_exists(config, n)}
        ours = {n for n in names if matches(n, targets)}
        assert ours == theirs, targets


def test_no_matching_module_is_one_clear_error():
    with pytest.raises(ValueError, match="match no module"):
        AdapterModel(tiny("bert"), TASKS, "lora", target_modules=["qkv"])
    with pytest.raises(ValueError, match="not a regular expression"):
        AdapterModel(tiny("bert"), TASKS, "lora", target_modules="(")
    with pytest.raises(TypeError, match=r"only nn\.Linear"):
        AdapterModel(tiny("bert"), TASKS, "lora", target_modules=["LayerNorm"])
    with pytest.raises(ValueError, match="unknown adapter"):
        AdapterModel(tiny("bert"), TASKS, "loar", target_modules=["query"])
    with pytest.raises(ValueError, match="r must be >= 1"):
        AdapterModel(tiny("bert"), TASKS, "lora", target_modules=["query"], r=0)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("name", LAYER_METHODS)
def test_zero_initialised_adapter_leaves_outputs_unchanged(name, kind):
    base = tiny(kind)
    x = batch()
    model = build(name, kind, base)
    model.eval()
    with torch.no_grad():
        ours, mask = model.adapted.hidden_states(x)
        plain = base(input_ids=x["input_ids"][:, : mask.shape[1]],
                     attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_base_is_frozen_and_only_adapters_train(name):
    model = build(name)
    trainable = model.adapter_parameters()
    assert trainable
    for key, p in model.adapted.base.named_parameters():
        if ".delta." not in key:
            assert not p.requires_grad, key
    for key, p in model.adapted.method.named_parameters():
        assert p.requires_grad, key


def test_task_ids_are_checked():
    model = build("lora")
    x = batch()
    x["task_ids"] = x["task_ids"] + 5
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 3\)"):
        model(x)
    del x["task_ids"]
    with pytest.raises(ValueError, match="lacks"):
        model(x)


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_declared_parameters_match_the_constructors(name):
    from manytask.registry import check_declared

    entry = ADAPTERS.entry(name)
    assert check_declared(entry) == []
    assert entry.summary and "20" in entry.summary  # cites its paper and year
    assert ADAPTERS.validate(name, {}) == {k: p.default for k, p in entry.params.items()}

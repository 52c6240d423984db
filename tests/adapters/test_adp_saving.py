"""Saving in PEFT's format and ours, loading, folding into the base."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_adapters import TASKS, batch, build, randomise, tiny

from manytask.adapters import ADAPTERS
from manytask.adapters.saving import fold, load_adapter, save_adapter

FOLDABLE = ["lora", "lora_per_task", "mtl_lora", "align_lora", "poly", "mhr", "scalearn"]


def _peft_hidden(peft_model, x, task_ids=None):
    ids, mask = x["input_ids"], x["attention_mask"]
    with torch.no_grad():
        if task_ids is not None:  # Poly: PolyModel.forward takes the task ids
            return peft_model.base_model(input_ids=ids, attention_mask=mask,
                                         task_ids=task_ids).last_hidden_state
        return peft_model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("name", ["lora", "poly", "mhr", "lora_per_task"])
def test_peft_loads_our_adapter_and_agrees(tmp_path, name, kind):
    peft = pytest.importorskip("peft")
    base = tiny(kind).double()
    model = build(name, kind, base).double().eval()
    randomise(model)
    x = batch(length=7)
    x["attention_mask"][:] = 1  # PEFT's model is compared on the full length
    with torch.no_grad():
        ours = model.adapted.hidden_states(x)[0]
    save_adapter(model, tmp_path / "a")
    if name in ("poly", "mhr") and kind == "gpt2":  # PEFT's poly adapts nn.Linear only
        assert not (tmp_path / "a" / "adapter_config.json").exists()
        return
    if name == "lora_per_task":
        for k, task in enumerate(TASKS):
            theirs = _peft_hidden(peft.PeftModel.from_pretrained(
                copy.deepcopy(base), tmp_path / "a" / "peft" / task.name).eval(), x)
            rows = x["task_ids"] == k
            torch.testing.assert_close(ours[rows], theirs[rows], atol=1e-6, rtol=0)
        return
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a").eval()
    theirs = _peft_hidden(loaded, x, x["task_ids"] if name in ("poly", "mhr") else None)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert (ours - base(input_ids=x["input_ids"]).last_hidden_state).abs().max() > 1e-3


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_save_load_round_trip_gives_identical_outputs(tmp_path, name):
    base = tiny("bert")
    model = build(name, "bert", base).eval()
    randomise(model)
    x = batch()
    save_adapter(model, tmp_path / name)
    loaded = load_adapter(tmp_path / name, copy.deepcopy(base), TASKS).eval()
    with torch.no_grad():
        before, after = model(x), loaded(x)
    for task in before:
        assert torch.equal(before[task], after[task]), task
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("name", FOLDABLE)
def test_folding_into_the_base_equals_the_adapter_on_that_task(name):
    base = tiny("bert")
    model = build(name, "bert", base).eval()
    randomise(model)
    x = batch()
    with torch.no_grad():
        ours, mask = model.adapted.hidden_states(x)
        for k, task in enumerate(TASKS):
            folded = fold(model, task.name)
            plain = folded(input_ids=x["input_ids"][:, : mask.shape[1]],
                           attention_mask=mask).last_hidden_state
            rows = x["task_ids"] == k
            torch.testing.assert_close(plain[rows], ours[rows], atol=1e-5, rtol=1e-5)
            assert not any("delta" in n for n, _ in folded.named_parameters())


@pytest.mark.parametrize("name", ["moa", "mor1e", "hyperx", "mpt", "task_prompt_vectors"])
def test_input_dependent_methods_refuse_to_fold(name):
    model = build(name)
    with pytest.raises(TypeError, match="cannot be folded"):
        fold(model, "t0")


def test_saved_lora_is_a_merge_source(tmp_path):
    from manytask.merging.lora import LoraSource
    from manytask.merging.sources import StateDictSource

    base = tiny("bert")
    model = build("lora", "bert", base).eval()
    randomise(model)
    save_adapter(model, tmp_path / "a")
    source = LoraSource(tmp_path / "a", StateDictSource(base.state_dict(), label="base"))
    folded = fold(model, "t0").state_dict()
    for key in ("encoder.layer.0.attention.self.query.weight",
                "encoder.layer.1.attention.self.value.weight"):
        torch.testing.assert_close(source.read(key), folded[key], atol=1e-6, rtol=0)


def test_refused_saves_write_nothing(tmp_path):
    model = build("lora")
    randomise(model)
    with torch.no_grad():
        next(iter(model.adapter_parameters().values()))[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        save_adapter(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(FileExistsError):
        save_adapter(build("lora"), tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def test_load_refuses_other_tasks_and_broken_files(tmp_path):
    base = tiny("bert")
    save_adapter(build("lora", "bert", base), tmp_path / "a")
    with pytest.raises(ValueError, match="saved for tasks"):
        load_adapter(tmp_path / "a", copy.deepcopy(base), TASKS[:2])
    (tmp_path / "a" / "manytask_adapter.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(tmp_path / "a", copy.deepcopy(base), TASKS)

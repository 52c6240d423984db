"""docs/recipes.md: the Lightning and Hugging Face recipes, run as written, train exactly as a
plain loop over the same batches (same seed, same optimizer), for a loss-level, a learnable
and a gradient-level method; and HF's weight decay is kept off the method's parameters."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import manytask
from manytask import HardSharing
from manytask.data import MultiDigits

PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
# (method, mode): a loss weighting, one with learnable parameters, a Gramian method and a
# learnable gradient-level one in feature mode
METHODS = [("equal", "exact"), ("uncertainty", "exact"), ("mgda", "exact"), ("imtl", "feature")]
STEPS, BATCH, LR = 3, 32, 1e-2
ADAMW = functools.partial(torch.optim.AdamW, weight_decay=0.0)  # torch's default is 0.01


def _recipe(index: int, needs: str, tmp_path: Path) -> dict[str, Any]:
    """Run block ``index`` of the page (its demo included) and return what it defined."""
    pytest.importorskip(needs)
    namespace: dict[str, Any] = {"__name__": "recipe"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(BLOCKS[index], f"{PAGE.name} block {index}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


@pytest.fixture(scope="module")
def lightning(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _recipe(0, "pytorch_lightning", tmp_path_factory.mktemp("lightning"))


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _recipe(1, "transformers", tmp_path_factory.mktemp("hf"))


def _data() -> tuple[Subset, list]:
    train = MultiDigits.splits(sizes={"train": 128}, missing_rate=0.2)["train"]
    return Subset(train, range(STEPS * BATCH)), train.tasks()


def _build(name: str) -> tuple[HardSharing, manytask.Balancer]:
    _, tasks = _data()
    torch.manual_seed(0)
    model = HardSharing(tasks, in_features=128, hidden=(32, 32))
    return model, manytask.make_balancer(name, tasks=[t.name for t in tasks])


def _own_loop(name: str, mode: str, optimizer_class: Any) -> list:
    """The README's own-loop recipe over the same batches, in order."""
    data, tasks = _data()
    model, method = _build(name)
    optimizer = optimizer_class([*model.parameters(), *method.parameters()], lr=LR)
    for x, targets in DataLoader(data, batch_size=BATCH):
        outputs, features = model(x, return_features=True)
        losses = manytask.task_losses(tasks, outputs, targets)
        manytask.backward(losses, method, features=features,
                          shared_params=model.shared_parameters(), mode=mode)
        optimizer.step()
        optimizer.zero_grad()
    return [*model.parameters(), *method.parameters()]


def _assert_same(got: list, want: list, before: list) -> None:
    assert len(got) == len(want) == len(before)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.detach(), w.detach(), rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(g, b) for g, b in zip(got, before, strict=True))  # it trained


@pytest.mark.parametrize(("name", "mode"), METHODS)
def test_lightning_recipe_trains_as_the_plain_loop(lightning: dict[str, Any], name: str,
                                                   mode: str, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    data, tasks = _data()
    model, method = _build(name)
    before = [p.detach().clone() for p in [*model.parameters(), *method.parameters()]]
    module = lightning["MultiTaskModule"](model, tasks, method, mode=mode, lr=LR)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=BATCH))
    assert trainer.global_step == STEPS
    _assert_same([*model.parameters(), *method.parameters()],
                 _own_loop(name, mode, torch.optim.Adam), before)


def _hf_trainer(hf: dict[str, Any], name: str, mode: str, tmp_path: Path,
                weight_decay: float = 0.0) -> Any:
    from transformers import TrainingArguments

    data, tasks = _data()
    model, method = _build(name)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH,
        learning_rate=LR, weight_decay=weight_decay, lr_scheduler_type="constant",
        max_grad_norm=0.0, optim="adamw_torch", train_sampling_strategy="sequential",
        remove_unused_columns=False,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        logging_strategy="no",
    )
    return hf["MultiTaskTrainer"](model=hf["WithMethod"](model, method), args=args,
                                  data_collator=hf["collate"], tasks=tasks, mode=mode,
                                  train_dataset=data, eval_dataset=data)


@pytest.mark.parametrize(("name", "mode"), METHODS)
def test_hf_recipe_trains_as_the_plain_loop(hf: dict[str, Any], name: str, mode: str,
                                            tmp_path: Path) -> None:
    trainer = _hf_trainer(hf, name, mode, tmp_path)
    wrapped = trainer.model
    before = [p.detach().clone() for p in wrapped.parameters()]
    trainer.train()
    assert trainer.state.global_step == STEPS
    _assert_same(list(wrapped.parameters()), _own_loop(name, mode, ADAMW), before)
    metrics = trainer.evaluate()
    assert {"eval_left_loss", "eval_left_accuracy", "eval_right_loss"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_hf_weight_decay_spares_the_methods_parameters(hf: dict[str, Any],
                                                       tmp_path: Path) -> None:
    trainer = _hf_trainer(hf, "uncertainty", "exact", tmp_path, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    own = list(trainer.model.method.parameters())
    assert own and not any(id(p) in decay for p in own)
    assert any(id(p) in decay for p in trainer.model.model.shared_parameters())

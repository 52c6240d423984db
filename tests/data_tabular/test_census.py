"""The Census-Income loader on a slice of the real file, and one end-to-end training run."""

from __future__ import annotations

import gzip
import os
from typing import Any

import pytest
import torch

import manytask
from manytask.data.census import COLUMNS, FILE_NAME, load_census
from manytask.models.inputs import TabularInput
from manytask.models.moe import MMoE
from manytask.tasks import AUC

PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data", "census_income_kdd"
)
needs_data = pytest.mark.skipif(
    not os.path.exists(os.path.join(PATH, FILE_NAME)), reason="shared census file not present"
)


def raw_rows(n: int) -> list[list[str]]:
    with gzip.open(os.path.join(PATH, FILE_NAME), "rt") as f:
        return [next(f).rstrip("\n").split(", ") for _ in range(n)]


@needs_data
@pytest.mark.parametrize("group", [1, 2])
def test_slice_has_the_papers_tasks_and_no_label_among_features(group: Any) -> None:
    data = load_census(PATH, group, max_rows=1500, seed=5)
    assert [len(data.train), len(data.val), len(data.test)] == [900, 300, 300]
    names = [t.name for t in data.tasks]
    assert names == (["income", "marital"] if group == 1 else ["education", "marital"])
    assert "marital_stat" not in data.categorical_names and "income" not in data.categorical_names
    assert "instance_weight" not in data.categorical_names + data.dense_names
    assert ("education" in data.categorical_names) is (group == 1)
    assert len(data.categorical_names) == (32 if group == 1 else 31)
    # label counts against the raw strings of the same rows
    rows = raw_rows(1500)
    marital = sum(r[COLUMNS.index("marital_stat")] == "Never married" for r in rows)
    total = sum(float(d.targets["marital"].sum()) for d in (data.train, data.val, data.test))
    assert total == marital
    if group == 1:
        rich = sum(r[-1] == "50000+." for r in rows)
        assert (
            sum(float(d.targets["income"].sum()) for d in (data.train, data.val, data.test)) == rich
        )
    for d in (data.train, data.val, data.test):
        assert d.categorical.shape[1] == len(data.cardinalities)
        assert bool((d.categorical.max(0).values < torch.tensor(data.cardinalities)).all())
    torch.testing.assert_close(data.train.dense.mean(0), torch.zeros(7), atol=1e-5, rtol=0)


@needs_data
def test_split_is_fixed_by_the_seed() -> None:
    a = load_census(PATH, 1, max_rows=600, seed=1)
    b = load_census(PATH, 1, max_rows=600, seed=1)
    c = load_census(PATH, 1, max_rows=600, seed=2)
    torch.testing.assert_close(a.test.dense, b.test.dense)
    assert not torch.equal(a.test.dense, c.test.dense)


def test_missing_file_and_bad_group_raise(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=FILE_NAME):
        load_census(str(tmp_path))
    with pytest.raises(ValueError, match="group"):
        load_census(str(tmp_path), 3)  # type: ignore[arg-type]


@needs_data
@pytest.mark.slow
def test_mmoe_beats_the_trivial_baseline_auc() -> None:
    torch.manual_seed(0)
    data = load_census(PATH, 1, max_rows=12000, seed=0)
    layer = TabularInput(data.cardinalities, data.n_dense, embedding_dim=4)
    model = MMoE(data.tasks, input_layer=layer, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    balancer = manytask.make_balancer("equal")
    opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        for batch in data.train.batches(256, generator=gen):
            outputs, feats = model(batch.x, return_features=True)
            losses = manytask.task_losses(data.tasks, outputs, batch.targets)
            opt.zero_grad()
            manytask.backward(
                losses, balancer, features=feats, shared_params=list(model.shared_parameters())
            )
            opt.step()
    with torch.no_grad():
        outputs = model(data.test.x)
    # A constant (trivial) predictor has AUC 0.5; both tasks must be far above it.
    for task in data.tasks:
        auc = AUC.fn(outputs[task.name], data.test.targets[task.name])
        assert auc > 0.85, (task.name, auc)

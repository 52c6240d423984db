"""configs/census.yaml on the first rows of the real file (``nrows``): the split follows the
seed, and an MMoE trained on it beats the trivial AUC on both tasks; the benchmarks' helper
(benchmarks/bundled.py) builds its tensors from the same config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import manytask
from manytask.config import load_config
from manytask.data.declared import parse_dataset, prepare_declared
from manytask.models.inputs import TabularInput
from manytask.models.moe import MMoE
from manytask.tasks import AUC

REPO = Path(__file__).resolve().parents[3]
CENSUS = REPO.parent / "shared" / "data" / "census_income_kdd"
needs_data = pytest.mark.skipif(not (CENSUS / "census-income.test.gz").is_file(),
                                reason="shared census file not present")


def _prepared(tmp: Path, rows: int, seed: int) -> Any:
    section = dict(load_config(REPO / "configs" / "census.yaml").dataset or {})
    table = {**section["table"], "nrows": rows,
             "split": {"ratio": [0.6, 0.2, 0.2], "seed": seed}}
    return prepare_declared(parse_dataset({**section, "table": table}, CENSUS),
                            cache_dir=tmp, batch_size=256)


@needs_data
def test_split_is_fixed_by_the_seed(tmp_path: Path) -> None:
    a, b, c = (_prepared(tmp_path, 600, s) for s in (1, 1, 2))
    assert [len(a.train.x["dense"]), len(a.val.x["dense"]), len(a.test.x["dense"])] == [
        360, 120, 120]
    torch.testing.assert_close(a.test.x["dense"], b.test.x["dense"])
    assert not torch.equal(a.test.x["dense"], c.test.x["dense"])


@needs_data
def test_benchmark_helper_reads_the_configs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bundled", REPO / "benchmarks" / "bundled.py")
    assert spec is not None and spec.loader is not None
    bundled = importlib.util.module_from_spec(spec)
    sys.modules["bundled"] = bundled  # dataclasses look their module up while being built
    spec.loader.exec_module(bundled)
    data = bundled.load_census(CENSUS, 2, max_rows=1500, seed=5)
    assert [len(data.train), len(data.val), len(data.test)] == [900, 300, 300]
    assert [t.name for t in data.tasks] == ["education", "marital"]
    assert "education" not in data.categorical_names and data.n_dense == 7
    assert bundled.TEXT_TASKS == ("sst2", "mr", "cr", "subj", "mpqa", "cola", "rte", "trec")
    assert len(bundled.COLUMNS) == 42 and len(bundled.COLLEGE) == 7


@needs_data
@pytest.mark.slow
def test_mmoe_beats_the_trivial_baseline_auc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = _prepared(tmp_path, 12000, 0)
    layer = TabularInput(data.cardinalities, data.n_dense, embedding_dim=4)
    model = MMoE(data.tasks, input_layer=layer, n_experts=4, expert_hidden=(16,),
                 tower_hidden=(8,))
    balancer = manytask.make_balancer("equal")
    opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=3e-3)
    for epoch in range(4):
        data.train.set_epoch(epoch)  # a new shuffle each epoch
        for x, targets in data.train:
            outputs, feats = model(x, return_features=True)
            losses = manytask.task_losses(data.tasks, outputs, targets)
            opt.zero_grad()
            manytask.backward(losses, balancer, features=feats,
                              shared_params=list(model.shared_parameters()))
            opt.step()
    with torch.no_grad():
        outputs = model(data.test.x)
    # A constant (trivial) predictor has AUC 0.5; both tasks must be far above it.
    for task in data.tasks:
        auc = AUC.fn(outputs[task.name], data.test.targets[task.name])
        assert auc > 0.85, (task.name, auc)

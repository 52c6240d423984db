"""save_pretrained / from_pretrained: identical predictions, no pickle, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from manytask import Task
from manytask.training import CheckpointError, from_pretrained, save_pretrained
from manytask.training.pretrained import build_model

TASKS = [Task.classification("a", 3), Task.regression("b", 2), Task.binary("c")]


@pytest.mark.parametrize("build", [
    {"arch": "hard_sharing", "hidden": [16, 8], "in_features": 6, "input": None},
    {"arch": "mmoe", "arch_params": {"n_experts": 3}, "in_features": 6, "input": None},
    {"arch": "hard_sharing", "hidden": [8], "in_features": 0,
     "input": {"kind": "tabular", "cardinalities": [4, 7], "n_dense": 2, "embedding_dim": 3}},
])
def test_round_trip_gives_identical_predictions(tmp_path: Path, build: dict) -> None:
    torch.manual_seed(0)
    model = build_model(build, TASKS).eval()
    if build["input"] is None:
        x = torch.randn(5, 6)
    else:
        x = {"categorical": torch.tensor([[1, 2], [3, 6], [0, 0], [2, 5], [1, 1]]),
             "dense": torch.randn(5, 2)}
    save_pretrained(model, tmp_path / "m", tasks=TASKS, build=build,
                    preprocessing={"data": "test"})
    loaded, tasks = from_pretrained(tmp_path / "m")
    assert [(t.name, t.kind, t.out_features) for t in tasks] == [
        (t.name, t.kind, t.out_features) for t in TASKS]
    with torch.no_grad():
        want, got = model(x), loaded(x)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["manytask.json",
                                                                  "model.safetensors"]
    assert set(load_file(tmp_path / "m" / "model.safetensors")) == set(model.state_dict())


def test_refusals(tmp_path: Path) -> None:
    build = {"arch": "hard_sharing", "hidden": [4], "in_features": 3, "input": None}
    model = build_model(build, TASKS)
    save_pretrained(model, tmp_path / "m", tasks=TASKS, build=build)
    meta = json.loads((tmp_path / "m" / "manytask.json").read_text())
    meta["build"]["hidden"] = [5]
    (tmp_path / "m" / "manytask.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match this model"):
        from_pretrained(tmp_path / "m")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_pretrained(model, tmp_path / "n", tasks=TASKS, build=build)
    assert not (tmp_path / "n").exists()
    with pytest.raises(CheckpointError, match="cannot read"):
        from_pretrained(tmp_path / "missing")


def test_train_writes_the_best_model_for_inference(tmp_path: Path, capsys) -> None:
    from manytask.cli import main

    run = tmp_path / "run"
    assert main(["train", "--train-size", "300", "--hidden", "16", "--epochs", "2",
                 "--no-progress", "--run-dir", str(run)]) == 0
    model, tasks = from_pretrained(run / "model")
    best = run / "checkpoints" / (run / "checkpoints" / "best").read_text()
    saved = load_file(best / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert [t.name for t in tasks] == ["left", "right"]

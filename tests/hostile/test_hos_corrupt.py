"""Truncated or corrupted files: safetensors weights given to a merge, and a training run's
checkpoint given to ``resume``.

Each corruption is derived from a valid file (cut at a point, bytes overwritten), so the test
does not depend on how the writer lays the file out. Expected: a ``ValueError`` naming the
file (merge) or a ``CheckpointError`` naming the checkpoint (resume), no output folder, and
through the command line one line on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hos_helpers import (
    assert_clear,
    assert_cli_one_line,
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    run_cli,
    tree,
    write_yaml,
)

from manytask.merging import merge
from manytask.merging.sources import open_source
from manytask.models import HardSharing
from manytask.tasks import Task
from manytask.training import CheckpointError, Trainer

# name -> how to spoil the bytes of a valid safetensors file
CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty file": lambda b: b"",
    "cut inside the length prefix": lambda b: b[:5],
    "cut inside the header": lambda b: b[: 8 + 10],
    "cut inside the data": lambda b: b[: len(b) - len(b) // 3],
    "last byte missing": lambda b: b[:-1],
    "extra bytes appended": lambda b: b + b"\x00" * 16,
    "header bytes zeroed": lambda b: b[:8] + b"\x00" * 24 + b[32:],
    "header not UTF-8": lambda b: b[:8] + b"\xff\xfe" + b[10:],
    "random bytes": lambda b: torch.randint(0, 256, (len(b),), dtype=torch.uint8).numpy().tobytes(),
}


def _spoil(model: Path, how: str) -> Path:
    weights = model / "model.safetensors"
    weights.write_bytes(CORRUPTIONS[how](weights.read_bytes()))
    return weights


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupted_safetensors_refused_before_any_output(tmp_path: Path, how: str) -> None:
    base, models = family(tmp_path)
    weights = _spoil(models[1], how)
    out = tmp_path / "out"
    raises_clear(lambda: merge(merge_config(base, models), out), str(weights), "safetensors")
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


@pytest.mark.parametrize("how", ["cut inside the data", "header bytes zeroed"])
def test_corrupted_base_leaves_previous_result_unchanged(tmp_path: Path, how: str) -> None:
    base, models = family(tmp_path)
    out = tmp_path / "out"
    merge(merge_config(base, models), out)
    before = tree(out)
    weights = _spoil(base, how)
    raises_clear(lambda: merge(merge_config(base, models), out), str(weights))
    assert tree(out) == before
    assert_no_partial(tmp_path, "out")


def test_corrupted_file_opened_alone(tmp_path: Path) -> None:
    base, _ = family(tmp_path, 0)
    weights = _spoil(base, "cut inside the data")
    raises_clear(lambda: open_source(weights), str(weights), "not a valid safetensors file")


def test_corrupted_shard_of_a_sharded_model(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    # re-write model 0 as two shards and an index, then cut the second shard
    from safetensors.torch import load_file, save_file

    state = load_file(str(models[0] / "model.safetensors"))
    (models[0] / "model.safetensors").unlink()
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[:1],
        "model-00002-of-00002.safetensors": names[1:],
    }
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(models[0] / file))
        weight_map.update({k: file for k in keys})
    (models[0] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    bad = models[0] / "model-00002-of-00002.safetensors"
    bad.write_bytes(bad.read_bytes()[:-7])
    out = tmp_path / "out"
    raises_clear(lambda: merge(merge_config(base, models), out), str(bad))
    assert not out.exists()


def test_corrupted_file_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, models = family(tmp_path)
    _spoil(models[0], "cut inside the header")
    config = write_yaml(tmp_path / "merge.yaml", merge_config(base, models))
    code, err = run_cli(["merge", str(config), str(tmp_path / "out"), "--quiet"], capsys)
    assert_cli_one_line(code, err, "model.safetensors", "not a valid safetensors file")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- checkpoints
def _trained_run(run_dir: Path) -> tuple[Trainer, Path]:
    """A run with one epoch checkpoint; returns a fresh trainer to resume and the checkpoint."""
    tasks = [Task.classification("a", 3), Task.regression("b")]
    g = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(8, 5, generator=g),
            {"a": torch.randint(0, 3, (8,), generator=g), "b": torch.randn(8, generator=g)},
        )
    ]

    def trainer() -> Trainer:
        torch.manual_seed(0)
        model = HardSharing(tasks, 5, hidden=[8])
        return Trainer(model, tasks, "equal", run_dir=run_dir, progress=False)

    trainer().fit(data, 1)
    return trainer(), run_dir / "checkpoints" / "epoch-0000"


CHECKPOINT_FILES = ["model.safetensors", "optimizer.safetensors", "rng.safetensors"]


@pytest.mark.parametrize("file", CHECKPOINT_FILES)
def test_corrupted_checkpoint_refused_on_resume(tmp_path: Path, file: str) -> None:
    fresh, ckpt = _trained_run(tmp_path / "run")
    target = ckpt / file
    target.write_bytes(target.read_bytes()[:-5])
    weights = [p.detach().clone() for p in fresh.model.parameters()]
    with pytest.raises(CheckpointError) as info:
        fresh.fit([], 2, resume=True)
    assert_clear(info.value, str(ckpt), "corrupted")
    # nothing was half restored into the model
    assert all(torch.equal(a, p) for a, p in zip(weights, fresh.model.parameters(), strict=True))


@pytest.mark.parametrize(
    "state",
    ['{"epoch": 0', '["not", "a", "mapping"]', '{"epoch": "zero", "optimizer": {}, "rng": {}}'],
    ids=["cut JSON", "a list", "epoch not a count"],
)
def test_corrupted_state_json_refused_on_resume(tmp_path: Path, state: str) -> None:
    fresh, ckpt = _trained_run(tmp_path / "run")
    (ckpt / "state.json").write_text(state)
    with pytest.raises(CheckpointError) as info:
        fresh.fit([], 2, resume=True)
    assert_clear(info.value, str(ckpt))


def test_checkpoint_of_another_model_refused_before_loading(tmp_path: Path) -> None:
    _, ckpt = _trained_run(tmp_path / "run")
    tasks = [Task.classification("a", 3), Task.regression("b")]
    other = Trainer(
        HardSharing(tasks, 5, hidden=[16]), tasks, "equal", run_dir=tmp_path / "run", progress=False
    )
    weights = [p.detach().clone() for p in other.model.parameters()]
    with pytest.raises(CheckpointError) as info:
        other.fit([], 2, resume=True)
    assert_clear(info.value, str(ckpt), "does not match this model", "shape")
    assert all(torch.equal(a, p) for a, p in zip(weights, other.model.parameters(), strict=True))

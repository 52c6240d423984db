"""Paths that escape where they belong.

* A sharded index may name only plain files beside it: ``../x.safetensors``, an absolute
  path or a sub-folder is refused (even when the file it points at is a valid checkpoint).
* Tensor names are keys, never paths: a name holding ``/`` or ``..`` is merged and written
  inside the output file, and nothing appears outside the output folder.
* The output folder may not be, lie inside, or contain an input; it may not be a file or a
  folder we did not write. Each refusal leaves every folder as it was.
* A training run folder that is a file is refused by the configuration, and a ``latest``
  checkpoint pointer naming ``../..`` is refused on resume without loading anything.
"""

from __future__ import annotations

import json
import os
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
    small_state,
    tree,
    write_model,
    write_yaml,
)
from safetensors.torch import load_file, save_file

from manytask.config import ConfigError, config_from_mapping
from manytask.merging import merge
from manytask.merging.sources import open_source
from manytask.models import HardSharing
from manytask.tasks import Task
from manytask.training import CheckpointError, Trainer


def sharded(folder: Path, shard_of: dict[str, str]) -> Path:
    """A model folder whose index places each tensor of ``small_state()`` as ``shard_of``
    says; the shards themselves are written wherever the (resolved) names point."""
    folder.mkdir(parents=True, exist_ok=True)
    state = small_state()
    for shard in set(shard_of.values()):
        target = Path(shard) if os.path.isabs(shard) else folder / shard
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v for k, v in state.items() if shard_of[k] == shard}, str(target))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shard_of}))
    return folder


@pytest.mark.parametrize(
    "shard",
    ["../outside.safetensors", "ABSOLUTE", "sub/inner.safetensors", "..", ".", ""],
    ids=["parent", "absolute", "sub-folder", "dot-dot", "dot", "empty"],
)
def test_index_naming_a_shard_outside_the_folder(tmp_path: Path, shard: str) -> None:
    if shard == "ABSOLUTE":
        shard = str(tmp_path / "elsewhere" / "abs.safetensors")
    names = sorted(small_state())
    shard_of = {names[0]: "model-00001-of-00002.safetensors"}
    shard_of.update({n: shard for n in names[1:]})
    folder = tmp_path / "model"
    if shard in ("..", ".", ""):
        sharded(folder, {n: "model-00001-of-00002.safetensors" for n in names})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shard_of}))
    else:
        sharded(folder, shard_of)  # the escaping shard exists and is valid
    raises_clear(
        lambda: open_source(folder),
        "model.safetensors.index.json",
        repr(names[1]),
        "plain file names",
    )


@pytest.mark.parametrize("value", [5, None, ["a.safetensors"], {"f": "a"}])
def test_index_with_a_shard_that_is_not_a_name(tmp_path: Path, value: object) -> None:
    folder = sharded(tmp_path / "model", {n: "model.safetensors" for n in small_state()})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": value}}))
    raises_clear(lambda: open_source(folder), "'w'", "plain file names")


@pytest.mark.parametrize("name", ["../../escape", "/etc/passwd", "a/../../b", "..", "x\\..\\y"])
def test_tensor_names_are_never_paths(tmp_path: Path, name: str) -> None:
    base, models = family(tmp_path)
    for folder in (base, *models):
        state = load_file(str(folder / "model.safetensors"))
        state[name] = torch.ones(2)
        save_file(state, str(folder / "model.safetensors"))
    before = {p for p in tmp_path.rglob("*") if "out" not in p.parts}
    out = tmp_path / "work" / "out"
    merge(merge_config(base, models), out)
    after = {p for p in tmp_path.rglob("*") if "out" not in p.parts}
    assert after - before == {tmp_path / "work"}  # only the output's parent was created
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "manytask_manifest.json",
        "manytask_merge.yaml",
        "model.safetensors",
    ]
    assert torch.equal(load_file(str(out / "model.safetensors"))[name], torch.ones(2))


@pytest.mark.parametrize("where", ["inside base", "inside a model", "deep inside base"])
def test_output_inside_an_input_folder(tmp_path: Path, where: str) -> None:
    base, models = family(tmp_path)
    out = {
        "inside base": base / "merged",
        "inside a model": models[1] / "merged",
        "deep inside base": base / "a" / "b",
    }[where]
    before = tree(tmp_path)
    raises_clear(lambda: merge(merge_config(base, models), out), "lies inside the folder of input")
    assert tree(tmp_path) == before
    assert not out.exists()


def test_output_is_an_input(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    first = tmp_path / "first"
    merge(merge_config(base, models), first)  # a previous result: replaceable by a merge
    before = tree(tmp_path)
    raises_clear(
        lambda: merge(merge_config(base, [*models, first]), first), "is the input", "models[2]"
    )
    assert tree(tmp_path) == before


def test_output_through_a_symlink_to_an_input(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(models[0], target_is_directory=True)
    before = tree(models[0])
    raises_clear(lambda: merge(merge_config(base, models), link), "is the input")
    assert tree(models[0]) == before


def test_output_containing_an_input(tmp_path: Path) -> None:
    root = tmp_path / "project"
    base, models = family(root)
    before = tree(root)
    raises_clear(lambda: merge(merge_config(base, models), root), "lies inside the output folder")
    assert tree(root) == before


@pytest.mark.parametrize("kind", ["a file", "a foreign folder"])
def test_output_we_did_not_write(tmp_path: Path, kind: str) -> None:
    base, models = family(tmp_path)
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    before = tree(tmp_path)
    raises_clear(lambda: merge(merge_config(base, models), out), str(out))
    assert tree(tmp_path) == before
    assert_no_partial(tmp_path, "out")


def test_output_inside_an_input_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, models = family(tmp_path)
    config = write_yaml(tmp_path / "merge.yaml", merge_config(base, models))
    code, err = run_cli(["merge", str(config), str(base / "merged"), "--quiet"], capsys)
    assert_cli_one_line(code, err, "lies inside the folder of input base_model")
    assert not (base / "merged").exists()


# ---------------------------------------------------------------------------- training runs
@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_run_dir_that_is_a_file(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    run_dir = blocker if where == "is a file" else blocker / "exp1"
    raises_clear(
        lambda: config_from_mapping({"run_dir": str(run_dir)}),
        "run_dir",
        "a file",
        kinds=ConfigError,
    )
    assert blocker.read_text() == "a file, not a folder"


def test_run_dir_that_is_a_file_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("x")
    code, err = run_cli(["train", "--run-dir", str(blocker), "--epochs", "0"], capsys)
    assert_cli_one_line(code, err, "run_dir", "a file")
    assert blocker.read_text() == "x"


def _run(run_dir: Path, hidden: int = 8) -> Trainer:
    tasks = [Task.classification("a", 3)]
    torch.manual_seed(0)
    return Trainer(
        HardSharing(tasks, 5, hidden=[hidden]), tasks, "equal", run_dir=run_dir, progress=False
    )


@pytest.mark.parametrize(
    "pointer",
    ["../../planted/checkpoints/epoch-0000", "/tmp", "epoch-0000/../../..", "epoch-1; rm -rf"],
)
def test_latest_pointer_escaping_the_run(tmp_path: Path, pointer: str) -> None:
    data = [(torch.randn(4, 5), {"a": torch.tensor([0, 1, 2, 0])})]
    _run(tmp_path / "planted").fit(data, 1)  # a valid checkpoint outside the run
    run = tmp_path / "run"
    _run(run).fit(data, 1)
    (run / "checkpoints" / "latest").write_text(pointer)
    fresh = _run(run)
    before = [p.detach().clone() for p in fresh.model.parameters()]
    with pytest.raises(CheckpointError) as info:
        fresh.fit(data, 2, resume=True)
    assert_clear(info.value, "latest", "not a checkpoint of this run")
    assert all(torch.equal(a, p) for a, p in zip(before, fresh.model.parameters(), strict=True))


def test_resume_from_a_run_of_another_model_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--run-dir",
        str(run),
        "--epochs",
        "1",
        "--train-size",
        "64",
        "--no-progress",
        "--hidden",
        "4",
    ]
    assert run_cli(args, capsys)[0] == 0
    wrong = write_model(tmp_path / "w", {"x": torch.ones(1)}) / "model.safetensors"
    (run / "checkpoints" / "epoch-0000" / "model.safetensors").write_bytes(wrong.read_bytes())
    code, err = run_cli([*args[:4], "2", *args[5:], "--resume"], capsys)
    assert_cli_one_line(code, err, "epoch-0000", "does not match this model")

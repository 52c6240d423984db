"""Class 1: files of a folder that are links leading out of it (issue 16).

A weight file, a shard named by the index, a tokenizer file copied into the output, a LoRA
adapter's files, a checkpoint of a run: each, as a link to a file outside its folder, is
refused with an error naming the link, and nothing is written; with the explicit option
(``allow_outside_links`` / ``--allow-outside-links``) the merge goes through. Links that stay
inside the folder, and a hub cache snapshot's links to its ``blobs``, are followed as usual.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hos_helpers import (
    assert_cli_one_line,
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    run_cli,
    small_state,
    write_adapter,
    write_model,
    write_yaml,
)
from safetensors.torch import load_file, save_file

from manytask.files import UnsafeFileError, inside
from manytask.merging import merge
from manytask.training.checkpoint import CheckpointError, latest_checkpoint


def _link_out(folder: Path, name: str, outside: Path) -> Path:
    """Replace ``folder/name`` by a link to a copy of it in ``outside``."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / name
    shutil.move(str(folder / name), target)
    (folder / name).symlink_to(target)
    return folder / name


def _sharded(folder: Path) -> Path:
    """``folder`` re-written as two shards and an index."""
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"a.safetensors": names[:1], "b.safetensors": names[1:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


# (which input, which file) -> a model family whose file is a link out of its folder
CASES = {
    "base weights": ("base", "model.safetensors"),
    "model weights": ("m0", "model.safetensors"),
    "tokenizer copied to output": ("base", "tokenizer.json"),
    "config copied to output": ("base", "config.json"),
    "shard named by index": ("base", "b.safetensors"),
    "shard index itself": ("base", "model.safetensors.index.json"),
}


def _setup(tmp_path: Path, case: str) -> tuple[dict, Path]:
    base, models = family(tmp_path / "models")
    (base / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0}}))
    who, name = CASES[case]
    folder = tmp_path / "models" / who
    if "shard" in case:
        _sharded(folder)
    link = _link_out(folder, name, tmp_path / "elsewhere")
    return merge_config(base, models), link


@pytest.mark.parametrize("case", sorted(CASES))
def test_link_out_of_a_model_folder_is_refused(tmp_path: Path, case: str) -> None:
    config, link = _setup(tmp_path, case)
    out = tmp_path / "out"
    raises_clear(lambda: merge(config, out), str(link), "outside", kinds=UnsafeFileError)
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


@pytest.mark.parametrize("case", sorted(CASES))
def test_link_out_allowed_when_asked(tmp_path: Path, case: str) -> None:
    config, link = _setup(tmp_path, case)
    out = tmp_path / "out"
    merge(config, out, allow_outside_links=True)
    assert (out / "manytask_manifest.json").is_file()
    if link.name in ("tokenizer.json", "config.json"):  # the target's content was copied
        assert (out / link.name).read_bytes() == link.resolve().read_bytes()
        assert not (out / link.name).is_symlink()


@pytest.mark.parametrize("allow", [False, True])
def test_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], allow: bool) -> None:
    config, link = _setup(tmp_path, "model weights")
    path = write_yaml(tmp_path / "merge.yaml", config)
    out = tmp_path / "out"
    argv = ["merge", "--quiet", str(path), str(out)]
    code, err = run_cli([*argv, "--allow-outside-links"] if allow else argv, capsys)
    if allow:
        assert code == 0 and (out / "model.safetensors").is_file()
    else:
        assert_cli_one_line(code, err, str(link), "--allow-outside-links")
        assert code == 2 and not out.exists()


@pytest.mark.parametrize("inner", ["model.safetensors", "tokenizer.json"])
def test_links_inside_the_folder_are_followed(tmp_path: Path, inner: str) -> None:
    base, models = family(tmp_path)
    (base / "tokenizer.json").write_text("{}")
    (base / "real").mkdir()
    shutil.move(str(base / inner), base / "real" / inner)
    (base / inner).symlink_to(Path("real") / inner)  # relative, inside
    merge(merge_config(base, models), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_hub_cache_snapshot_links_to_its_blobs(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--toy"
    snap = repo / "snapshots" / "abc123"
    write_model(repo / "blobs" / "x", small_state(0))  # the files, under blobs/
    snap.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (snap / name).symlink_to(repo / "blobs" / "x" / name)
    assert inside(snap, "model.safetensors") == snap / "model.safetensors"
    _, models = family(tmp_path / "fam", 1)
    merge(merge_config(snap, models), tmp_path / "out")
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    (snap / "stray.json").symlink_to(other / "stray.json")
    with pytest.raises(UnsafeFileError, match=r"stray\.json"):
        inside(snap, "stray.json")


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_lora_adapter_file_linking_out(tmp_path: Path, name: str) -> None:
    base, _ = family(tmp_path, 0)
    adapter = write_adapter(tmp_path / "adapter")
    link = _link_out(adapter, name, tmp_path / "elsewhere")
    out = tmp_path / "out"
    config = merge_config(base, [adapter])
    raises_clear(lambda: merge(config, out), str(link), kinds=UnsafeFileError)
    assert not out.exists()
    merge(config, out, allow_outside_links=True)
    assert (out / "model.safetensors").is_file()


def _fake_run(tmp_path: Path) -> Path:
    """A run folder with one checkpoint (written by the real save_checkpoint)."""
    from torch import nn

    from manytask.training.checkpoint import save_checkpoint

    run = tmp_path / "run"
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(run, 1, model=model, optimizer=optimizer, balancer=nn.Module(), info={})
    return run


@pytest.mark.parametrize("what", ["checkpoint folder", "state.json", "model.safetensors"])
def test_checkpoint_linking_out_of_the_run(tmp_path: Path, what: str) -> None:
    from torch import nn

    from manytask.training.checkpoint import load_checkpoint

    run = _fake_run(tmp_path)
    folder = run / "checkpoints" / "epoch-0001"
    if what == "checkpoint folder":
        shutil.move(str(folder), tmp_path / "elsewhere")
        folder.symlink_to(tmp_path / "elsewhere")
        raises_clear(lambda: latest_checkpoint(run), "epoch-0001", "outside",
                     "--allow-outside-links", kinds=CheckpointError)
        return
    link = _link_out(folder, what, tmp_path / "elsewhere")
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raises_clear(
        lambda: load_checkpoint(folder, model=model, optimizer=optimizer, balancer=nn.Module()),
        str(link),
        "--allow-outside-links",
        kinds=CheckpointError,
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

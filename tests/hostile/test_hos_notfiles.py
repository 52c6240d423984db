"""Class 5: a named pipe or a device where a file is expected (issue 16).

Opening a FIFO for reading blocks until a writer comes, forever; reading a device like
``/dev/zero`` never ends. Every place a user file is opened (merge and train configs, model
files, shards, shard indexes, files copied to the output, LoRA adapter files, checkpoint
files and the ``latest`` pointer) refuses anything that is not a regular file, before opening
it, naming it. Each case runs under a watchdog: a hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hos_helpers import (
    assert_clear,
    assert_cli_one_line,
    family,
    merge_config,
    run_cli,
    write_adapter,
)
from torch import nn

from manytask.merging import merge
from manytask.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

KINDS = ["fifo", "/dev/zero", "/dev/null", "folder"]


def _make(path: Path, kind: str) -> None:
    """Put a non-file of ``kind`` at ``path`` (replacing what is there)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(kind)


def _finishes(call: Callable[[], Any], fifo: Path | None = None, timeout: float = 20) -> Any:
    """``call()``'s exception (or ``None``), failing the test if it blocks past ``timeout``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            call()
        except BaseException as err:
            box["err"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        if fifo is not None and fifo.exists():  # unblock the reader: a writer that closes
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail(f"blocked for more than {timeout} s")
    return box.get("err")


MODEL_FILES = {
    "weights": ("base", "model.safetensors", False),
    "fine-tuned weights": ("m0", "model.safetensors", False),
    "shard": ("base", "b.safetensors", True),
    "shard index": ("base", "model.safetensors.index.json", True),
    "tokenizer copied": ("base", "tokenizer.json", False),
    "config copied": ("base", "config.json", False),
}


def _shard(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    save_file({k: state[k] for k in names[:1]}, str(folder / "a.safetensors"))
    save_file({k: state[k] for k in names[1:]}, str(folder / "b.safetensors"))
    wm = {k: "a.safetensors" if k in names[:1] else "b.safetensors" for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))


# (a folder named like a weight or tokenizer file is another case: not a file to open)
MODEL_CASES = [(c, k) for c in sorted(MODEL_FILES) for k in KINDS
               if k != "folder" or c in ("shard", "shard index")]


@pytest.mark.parametrize(("case", "kind"), MODEL_CASES)
def test_model_files(tmp_path: Path, case: str, kind: str) -> None:
    base, models = family(tmp_path / "m")
    (base / "tokenizer.json").write_text("{}")
    who, name, sharded = MODEL_FILES[case]
    folder = tmp_path / "m" / who
    if sharded:
        _shard(folder)
    _make(folder / name, kind)
    out = tmp_path / "out"
    err = _finishes(lambda: merge(merge_config(base, models), out), folder / name)
    assert err is not None, "a non-file was accepted"
    assert_clear(err, name)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_lora_files(tmp_path: Path, name: str, kind: str) -> None:
    base, _ = family(tmp_path, 0)
    adapter = write_adapter(tmp_path / "adapter")
    _make(adapter / name, kind)
    err = _finishes(lambda: merge(merge_config(base, [adapter]), tmp_path / "out"),
                    adapter / name)
    assert err is not None
    assert_clear(err, name)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/null", "folder"])
def test_model_path_itself(tmp_path: Path, kind: str) -> None:
    base, models = family(tmp_path)
    weird = tmp_path / "weird.safetensors"
    _make(weird, kind)
    err = _finishes(lambda: merge(merge_config(base, [weird, models[0]]), tmp_path / "out"),
                    weird)
    assert err is not None
    assert_clear(err, "weird.safetensors")


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "folder"])
@pytest.mark.parametrize("command", ["merge", "train", "bench"])
def test_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str,
                      kind: str) -> None:
    config = tmp_path / "config.yaml"
    _make(config, kind)
    argv = {
        "merge": ["merge", "--quiet", str(config), str(tmp_path / "out")],
        "train": ["train", "--config", str(config)],
        "bench": ["bench", "--config", str(config), "--run-dir", str(tmp_path / "bench")],
    }[command]
    box: dict[str, Any] = {}

    def call() -> None:
        box["result"] = run_cli(argv, capsys)

    assert _finishes(call, config) is None
    code, err = box["result"]
    assert_cli_one_line(code, err, str(config))
    assert code == 2


def _checkpoint(tmp_path: Path) -> tuple[Path, nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    folder = save_checkpoint(tmp_path / "run", 1, model=model, optimizer=opt,
                             balancer=nn.Module(), info={})
    return folder, model, opt


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("name", ["state.json", "model.safetensors", "optimizer.safetensors",
                                  "rng.safetensors"])
def test_checkpoint_files(tmp_path: Path, name: str, kind: str) -> None:
    folder, model, opt = _checkpoint(tmp_path)
    _make(folder / name, kind)
    err = _finishes(lambda: load_checkpoint(folder, model=model, optimizer=opt,
                                            balancer=nn.Module()), folder / name)
    assert err is not None
    assert_clear(err, name)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_latest_pointer(tmp_path: Path, kind: str) -> None:
    folder, _, _ = _checkpoint(tmp_path)
    pointer = folder.parent / "latest"
    _make(pointer, kind)
    err = _finishes(lambda: latest_checkpoint(tmp_path / "run"), pointer)
    assert err is not None
    assert_clear(err, "latest")

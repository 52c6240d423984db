"""Shared builders and checks for the hostile-input suite.

Every hostile case ends the same way, and these helpers say what that way is:

* :func:`assert_clear` - the exception is one of ours or a ``ValueError``/``TypeError``/
  ``FileNotFoundError`` (never a raw error type from torch or safetensors), and its message
  names the problem (the file, tensor, key or task given as ``needles``);
* :func:`assert_cli_one_line` - through the command line: exit code not 0, one line on
  stderr, no traceback;
* :func:`tree` / :func:`assert_no_partial` - the output location is absent or unchanged, and
  no temporary sibling is left behind.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor

from manytask.cli import main

# The error types a user may see: ours all derive from ValueError (ConfigError, TargetError,
# OutputError, NonFiniteTensorError, CheckpointError) or FloatingPointError
# (NonFiniteLossError); the built-in ones are the three the command line reports as one line.
ALLOWED = (ValueError, TypeError, FileNotFoundError)
# Modules whose own exception types must never reach the user.
FOREIGN = ("torch", "safetensors", "_pickle", "pickle", "yaml", "json", "zipfile")


def assert_clear(err: BaseException, *needles: str) -> None:
    """``err`` is an allowed, first-party type whose message contains every needle."""
    kind = type(err)
    assert isinstance(err, ALLOWED) or kind.__module__.startswith("manytask"), (
        f"{kind.__module__}.{kind.__name__} reached the user: {err}"
    )
    assert not kind.__module__.startswith(FOREIGN), f"raw {kind.__module__} error: {err}"
    message = str(err)
    assert "Traceback" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not named in: {message}"


def raises_clear(call: Any, *needles: str, kinds: type[BaseException] | tuple = Exception) -> None:
    """Run ``call()``; it must raise ``kinds`` and pass :func:`assert_clear`."""
    with pytest.raises(kinds) as info:
        call()
    assert_clear(info.value, *needles)


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``manytask ARGV`` in this process; returns the exit code and stderr."""
    capsys.readouterr()  # drop anything printed before
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_cli_one_line(code: int, err: str, *needles: str) -> None:
    """A failed command: non-zero exit, exactly one line on stderr, naming every needle."""
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("manytask ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named in: {lines[0]}"


# ---------------------------------------------------------------------------- output location
def tree(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (empty if it is absent)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_no_partial(parent: Path, name: str) -> None:
    """No temporary sibling (``.NAME.partial-*``, ``.NAME.old-*``) of ``parent / name`` left."""
    left = [p.name for p in parent.glob(f".{name}.*")]
    assert not left, f"temporary output left behind: {left}"


# ---------------------------------------------------------------------------- safetensors files
def raw_safetensors(path: Path, header: Any, data: bytes, *, length: int | None = None) -> Path:
    """A file in the safetensors layout with any ``header`` (lying or not) and ``data``."""
    text = json.dumps(header).encode()
    size = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + text + data)
    return path


def zeros(n_bytes: int) -> bytes:
    return bytes(n_bytes)


def small_state(seed: int = 0) -> dict[str, Tensor]:
    """A tiny two-layer checkpoint (float32)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.0.weight": torch.randn(6, 4, generator=g),
        "layer.0.bias": torch.randn(6, generator=g),
        "layer.1.weight": torch.randn(3, 6, generator=g),
    }


def write_model(folder: Path, state: dict[str, Tensor]) -> Path:
    """A Hugging Face-style folder with ``model.safetensors`` and a ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    return folder


def family(root: Path, n: int = 2) -> tuple[Path, list[Path]]:
    """A base folder and ``n`` fine-tuned folders (base plus small deltas) under ``root``."""
    base_state = small_state(0)
    base = write_model(root / "base", base_state)
    models = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        tuned = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
        models.append(write_model(root / f"m{i}", tuned))
    return base, models


def merge_config(base: Path | str | None, models: Sequence[Path | str], **extra: Any) -> dict:
    """A task-arithmetic merge of ``models`` onto ``base``."""
    config: dict[str, Any] = {
        "merge_method": "task_arithmetic" if base is not None else "linear",
        "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in models],
    }
    if base is not None:
        config["base_model"] = str(base)
    config.update(extra)
    return config


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def write_adapter(folder: Path, rank: int = 2, **config: Any) -> Path:
    """A PEFT LoRA adapter folder for :func:`family`'s base, adapting ``layer.0`` and
    ``layer.1`` (its ``adapter_config.json`` holds ``r``, ``lora_alpha`` and ``config``)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    tensors = {}
    for layer, (out, inp) in (("layer.0", (6, 4)), ("layer.1", (3, 6))):
        prefix = f"base_model.model.{layer}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, inp, generator=g)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, rank, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    spec = {"r": rank, "lora_alpha": 4, **config}
    (folder / "adapter_config.json").write_text(json.dumps(spec))
    return folder

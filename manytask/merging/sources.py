"""Checkpoint sources: read tensor headers without loading data, and rows of one tensor on demand.

A :class:`Source` is what the merge engine reads from. Every source answers two questions:
``info(name)`` (shape and dtype, from the file header alone) and ``read(name, start, stop)``
(rows ``start:stop`` of the tensor along its first dimension, or the whole tensor when both are
``None``). Safetensors files are memory-mapped by ``safe_open``, so reading a row range touches
only those bytes.

Supported inputs (:func:`open_source`):

* a ``.safetensors`` file;
* a Hugging Face model folder holding ``model.safetensors`` or shards listed in
  ``model.safetensors.index.json``;
* PyTorch pickle files (``.bin``/``.pt``/``.pth``, or a folder with ``pytorch_model.bin`` or its
  sharded index) only when ``allow_pickle=True``, and then only through
  ``torch.load(weights_only=True)``, which refuses arbitrary objects;
* a PEFT LoRA adapter folder (see :mod:`manytask.merging.lora`), which needs the base model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import inside, load_json, regular_file
from .pickles import load_pickle, pickle_hint

# safetensors header dtype names -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor, as read from a header."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class Source:
    """Read-only access to the tensors of one checkpoint."""

    label: str
    # True when read() returns new tensors the caller may modify (not views of shared memory).
    fresh: bool = True

    def keys(self) -> list[str]:
        raise NotImplementedError  # abstract: every concrete source overrides it

    def info(self, name: str) -> TensorInfo:
        raise NotImplementedError  # abstract

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        """Rows ``start:stop`` (first dimension) of tensor ``name``; all of it when both None."""
        raise NotImplementedError  # abstract

    def folder(self) -> Path | None:
        """The model folder holding config and tokenizer files, if any."""
        return None

    def close(self) -> None:
        """Release open file handles."""

    def __contains__(self, name: object) -> bool:
        return name in set(self.keys())


class SafetensorsSource(Source):
    """One or several safetensors files seen as one checkpoint (a sharded model)."""

    # safetensors (0.8) returns tensors backed by a private copy-on-write memory map: writing
    # to one changes what later reads of the same rows return in this process, so the engine
    # must copy before it subtracts the base in place (multi-pass methods re-read rows).
    fresh = False

    def __init__(self, files: Mapping[str, Path] | Path, *, label: str, folder: Path | None = None):
        from safetensors import safe_open

        self.label = label
        self._folder = folder
        paths = [files] if isinstance(files, Path) else sorted(set(files.values()))
        self._handles: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        for path in paths:
            regular_file(path, what=f"{label}: weight file")
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as err:  # safetensors raises its own error types
                raise ValueError(
                    f"{label}: {str(path)!r} is not a valid safetensors file: {err}"
                    f"{pickle_hint(path)}"
                ) from None
            self._handles[path] = handle
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if key in self._where:
                    raise ValueError(f"{label}: tensor {key!r} appears in two shards")
                self._where[key] = path
        if not isinstance(files, Path):
            # The index must agree with the shards' own headers.
            for key, path in files.items():
                if self._where.get(key) != path:
                    raise ValueError(
                        f"{label}: index lists tensor {key!r} in {path.name}, "
                        "but that shard does not contain it"
                    )
        self._infos: dict[str, TensorInfo] = {}

    def keys(self) -> list[str]:
        return sorted(self._where)

    def _slice(self, name: str) -> Any:
        try:
            path = self._where[name]
        except KeyError:
            raise KeyError(f"{self.label}: no tensor {name!r}") from None
        return self._handles[path].get_slice(name)

    def info(self, name: str) -> TensorInfo:
        if name not in self._infos:
            sl = self._slice(name)
            dtype_name = sl.get_dtype()
            if dtype_name not in SAFETENSORS_DTYPES:
                raise TypeError(f"{self.label}: tensor {name!r} has unsupported dtype {dtype_name}")
            self._infos[name] = TensorInfo(tuple(sl.get_shape()), SAFETENSORS_DTYPES[dtype_name])
        return self._infos[name]

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        info = self.info(name)
        if not info.shape or (start is None and stop is None):
            return self._handles[self._where[name]].get_tensor(name)
        return self._slice(name)[start:stop]

    def folder(self) -> Path | None:
        return self._folder

    def close(self) -> None:
        self._handles.clear()


class StateDictSource(Source):
    """Tensors already in memory (a state dict, or a loaded pickle checkpoint)."""

    fresh = False

    def __init__(self, tensors: Mapping[str, Tensor], *, label: str, folder: Path | None = None):
        self.label = label
        self._folder = folder
        self._tensors: dict[str, Tensor] = {}
        for key, value in tensors.items():
            if not isinstance(key, str):
                raise TypeError(f"{label}: state dict keys must be strings, got {key!r}")
            if not isinstance(value, Tensor):
                raise TypeError(f"{label}: entry {key!r} is a {type(value).__name__}, not a Tensor")
            self._tensors[key] = value.detach()

    def keys(self) -> list[str]:
        return sorted(self._tensors)

    def info(self, name: str) -> TensorInfo:
        t = self._tensors[name]
        return TensorInfo(tuple(t.shape), t.dtype)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        t = self._tensors[name]
        if t.dim() == 0 or (start is None and stop is None):
            return t
        return t[start:stop]

    def folder(self) -> Path | None:
        return self._folder


def _read_index(path: Path, label: str, allow_outside: bool) -> dict[str, Path]:
    index = load_json(inside(path.parent, path.name, what=f"{label}: shard index",
                             allow_outside=allow_outside), what=f"{label}: shard index")
    if not isinstance(index, dict) or "weight_map" not in index:
        raise ValueError(f"{label}: shard index {str(path)!r} has no 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise ValueError(f"{label}: 'weight_map' in {str(path)!r} is not a mapping")
    for key, shard in weight_map.items():
        # A shard is a file beside the index: a path could point anywhere on the disk.
        if not isinstance(shard, str) or not _plain_file_name(shard):
            raise ValueError(
                f"{label}: shard index {str(path)!r} places tensor {key!r} in {shard!r}; "
                "shards must be plain file names in the model folder"
            )
    # A shard named by the index may be a link out of the model folder: refused, by name.
    shards = {v: inside(path.parent, v, what=f"{label}: shard", allow_outside=allow_outside)
              for v in set(weight_map.values())}
    return {k: shards[v] for k, v in weight_map.items()}


def _plain_file_name(name: str) -> bool:
    """True for a bare file name: no folder part, not ``.``/``..``, not absolute."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not Path(name).is_absolute()
    )


def is_lora_folder(path: Path) -> bool:
    # exists(), not is_file(): a pipe named adapter_config.json is refused by name later
    return path.is_dir() and (path / "adapter_config.json").exists()


def open_source(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    allow_outside_links: bool = False,
) -> Source:
    """Open a checkpoint file or Hugging Face model folder (not a LoRA adapter: see ``lora``).

    Files of a folder (weights, shards named by its index) that are links leading out of it
    are refused unless ``allow_outside_links``; anything not a regular file is refused
    before it is opened.
    """
    p = Path(path)
    label = str(path)
    source = _open_source(p, label, allow_pickle, allow_outside_links)
    if not source.keys():
        raise ValueError(f"{label}: the checkpoint holds no tensor")
    return source


def _open_source(p: Path, label: str, allow_pickle: bool, allow_outside: bool) -> Source:
    if not p.exists():
        raise ValueError(f"model path {label!r} does not exist")
    if not p.is_dir():
        regular_file(p, what="model file")  # a pipe or device would block on open
        if p.suffix == ".safetensors":
            return SafetensorsSource(p, label=label)
        if p.suffix in PICKLE_SUFFIXES:
            return _pickle_source({p.name: p}, label, None, allow_pickle)
        raise ValueError(f"{label}: unknown checkpoint format {p.suffix!r}")
    if is_lora_folder(p):
        raise ValueError(f"{label} is a LoRA adapter folder; it needs a base model")
    def own(name: str) -> Path:
        return inside(p, name, what=f"{label}: file", allow_outside=allow_outside)

    if _present(p / SAFETENSORS_INDEX):
        files = _read_index(p / SAFETENSORS_INDEX, label, allow_outside)
        return SafetensorsSource(files, label=label, folder=p)
    if _present(p / SAFETENSORS_SINGLE):
        return SafetensorsSource(own(SAFETENSORS_SINGLE), label=label, folder=p)
    singles = sorted(p.glob("*.safetensors"))
    if len(singles) == 1:
        return SafetensorsSource(own(singles[0].name), label=label, folder=p)
    if _present(p / PICKLE_INDEX):
        files = _read_index(p / PICKLE_INDEX, label, allow_outside)
        return _pickle_source(files, label, p, allow_pickle)
    if _present(p / PICKLE_SINGLE):
        return _pickle_source({PICKLE_SINGLE: own(PICKLE_SINGLE)}, label, p, allow_pickle)
    raise ValueError(
        f"{label}: no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} or single .safetensors file found"
    )


def _pickle_source(
    files: Mapping[str, Path], label: str, folder: Path | None, allow_pickle: bool
) -> Source:
    if not allow_pickle:
        names = ", ".join(sorted({p.name for p in files.values()}))
        raise ValueError(
            f"{label}: holds only PyTorch pickle weights ({names}), refused by default; pass "
            "allow_pickle=True (YAML: 'allow_pickle: true') to load them with "
            "torch.load(weights_only=True)"
        )
    tensors: dict[str, Tensor] = {}
    for path in sorted(set(files.values())):
        for key, value in load_pickle(path, label).items():
            if key in tensors:
                raise ValueError(f"{label}: tensor {key!r} appears in two shards")
            tensors[key] = value
    return StateDictSource(tensors, label=label, folder=folder)


def _present(path: Path) -> bool:
    """``path`` is there as something other than a folder (a pipe named like a weight file
    counts: it is then refused by name, not skipped)."""
    return path.exists() and not path.is_dir()


def iter_rows(n_rows: int, rows_per_chunk: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges covering ``n_rows`` in chunks of ``rows_per_chunk``."""
    for start in range(0, n_rows, rows_per_chunk):
        yield start, min(start + rows_per_chunk, n_rows)

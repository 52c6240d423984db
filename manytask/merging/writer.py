"""Streaming output: safetensors shards written tensor by tensor, into a directory that
appears at its final path only once complete.

The safetensors layout is an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw bytes. All shapes and dtypes are known
from the validated plan, so the header is written first and each tensor's bytes are streamed
as they are merged: no output tensor is ever held whole.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch
from torch import Tensor

from .sources import SAFETENSORS_DTYPES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE

_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
MARKER = "manytask_merge.yaml"


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _header(tensors: Sequence[OutputTensor]) -> bytes:
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        meta[t.name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


class ShardedWriter:
    """Writes ``tensors`` (in this order) into shards of at most ``shard_size`` bytes each
    (a single tensor larger than that gets a shard of its own), plus the index if sharded."""

    def __init__(self, folder: Path, tensors: Sequence[OutputTensor], shard_size: int):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors output needs a little-endian machine")
        self.folder = folder
        shards: list[list[OutputTensor]] = [[]]
        size = 0
        for t in tensors:
            if shards[-1] and size + t.nbytes > shard_size:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        n = len(shards)
        self.files = (
            [SAFETENSORS_SINGLE]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._shards = shards
        self._queue = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._pos = -1
        self._file: IO[bytes] | None = None
        self._open_shard = -1
        self._remaining = 0
        self.total_size = sum(t.nbytes for t in tensors)

    def begin(self, name: str) -> None:
        """Start the next tensor, which must be ``name``."""
        if self._remaining:
            raise RuntimeError("previous tensor was not fully written")
        self._pos += 1
        shard, t = self._queue[self._pos]
        if t.name != name:
            raise RuntimeError(f"tensors out of order: expected {t.name!r}, got {name!r}")
        if shard != self._open_shard:
            self._close_file()
            self._file = open(self.folder / self.files[shard], "wb")  # noqa: SIM115
            self._file.write(_header(self._shards[shard]))
            self._open_shard = shard
        self._remaining = t.nbytes
        self._dtype = t.dtype

    def write(self, rows: Tensor) -> None:
        """Append the next rows of the current tensor."""
        assert self._file is not None
        if rows.dtype != self._dtype:
            raise RuntimeError(f"expected {self._dtype}, got {rows.dtype}")
        data = rows.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes > self._remaining:
            raise RuntimeError("more data than the tensor's declared size")
        self._file.write(data.tobytes() if not data.flags.c_contiguous else data.data)
        self._remaining -= data.nbytes

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._remaining or self._pos != len(self._queue) - 1:
            self._close_file()
            raise RuntimeError("output closed before every tensor was written")
        self._close_file()
        if len(self.files) > 1:
            weight_map = {t.name: self.files[i] for i, t in self._queue}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        self._close_file()


class AtomicDirectory:
    """A temporary sibling of ``target`` that replaces it only when the block succeeds.

    ``target`` must not exist, be an empty directory, or hold a previous manytask merge (its
    ``manytask_merge.yaml`` marker): we never replace a folder we did not write. On failure
    the temporary directory is removed and ``target`` is left as it was. The replacement of a
    previous result is two renames (old aside, new in place), then the old copy is deleted.
    """

    def __init__(self, target: str | os.PathLike[str]):
        self.target = Path(target).absolute()
        if self.target.exists():
            if not self.target.is_dir():
                raise ValueError(f"output path {str(self.target)!r} exists and is not a folder")
            entries = list(self.target.iterdir())
            if entries and not (self.target / MARKER).is_file():
                raise ValueError(
                    f"output folder {str(self.target)!r} is not empty and does not hold a "
                    "previous manytask merge; choose a new or empty folder"
                )
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent)
        )
        return self.path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.path is not None
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        os.chmod(self.path, 0o755)  # mkdtemp makes it private
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
            os.rename(self.path, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.target)

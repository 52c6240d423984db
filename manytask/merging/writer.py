"""Streaming output: safetensors shards written tensor by tensor, into a directory that
appears at its final path only once complete.

The safetensors layout is an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw bytes. All shapes and dtypes are known
from the validated plan, so the header is written first and each tensor's bytes are streamed
as they are merged: no output tensor is ever held whole.
"""

from __future__ import annotations

import contextlib
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

from ..finite import check_finite
from ..locks import FolderLock
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
        self._name = t.name

    def write(self, rows: Tensor) -> None:
        """Append the next rows of the current tensor."""
        assert self._file is not None
        if rows.dtype != self._dtype:
            raise RuntimeError(f"expected {self._dtype}, got {rows.dtype}")
        # Finite inputs can still merge to inf (a float16 output, a huge lambda): refused
        # here, in the temporary folder, so nothing is written.
        check_finite(rows, self._name, "merge output")
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


MANIFEST = "manytask_manifest.json"
"""The list of files a merge wrote into its output folder: a later merge replaces that folder
only if it holds nothing else (or the user says ``--overwrite``)."""


def _between_renames() -> None:
    """Nothing; the fault tests replace it to simulate a kill while a result is replaced."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` when
    the system or file system cannot, and then nothing was changed."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def written_files(folder: Path) -> list[str]:
    """Relative paths of the files under ``folder``, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` its manifest does not list (everything, when it has none)."""
    from ..files import UnsafeFileError, load_json

    manifest = folder / MANIFEST
    listed: set[str] = set()
    if manifest.exists():
        try:
            data = load_json(manifest, what="output manifest")
        except UnsafeFileError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("files"), list):
            listed = {f for f in data["files"] if isinstance(f, str)}
    if not listed:
        return sorted(p.name for p in folder.iterdir())
    parents = {str(q) for f in listed for q in Path(f).parents}  # folders of listed files
    foreign = []
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if rel == MANIFEST or rel in listed or (rel in parents and p.is_dir()):
            continue
        foreign.append(rel)
    return foreign


class AtomicDirectory:
    """A temporary sibling of ``target`` that replaces it only when the block succeeds.

    ``target`` must not exist, be an empty folder, or hold only files a previous merge wrote
    (listed in its ``manytask_manifest.json``), unless ``overwrite``: we never replace a folder
    holding the user's own files unasked. On failure the temporary folder is removed and
    ``target`` is left as it was.

    A previous result is replaced by one atomic exchange of the two folders where the system
    has it (Linux ``renameat2``), so that at every instant one complete result is in place;
    elsewhere by two renames (old aside as ``.NAME.old-*``, new in). Leftovers of a write
    killed at any point are recovered at the next start (see :func:`recover`).

    Two merges into one ``target`` exclude each other: the lock ``.NAME.lock`` (see
    :func:`output_lock`) is taken before anything else and held until the result is in place,
    so a second merge is refused at once (:class:`~manytask.locks.FolderBusyError`, one line)
    and never touches the first's temporary folder; the lock of a killed merge is stale and
    taken over, with a note.
    """

    def __init__(self, target: str | os.PathLike[str], *, overwrite: bool = False):
        self.target = Path(target).absolute()
        self.path: Path | None = None
        self._lock = output_lock(self.target)
        try:
            self._made = _make_parent(self.target.parent)
            stale = self._lock.acquire()  # before recover(): a live merge's partial is its own
            self.notes = [f"took over the stale lock of {stale}, which is no longer running"
                          ] if stale else []
            self.notes += recover(self.target)
            if self.target.exists():
                if not self.target.is_dir():
                    raise ValueError(
                        f"output path {str(self.target)!r} exists and is not a folder")
                foreign = foreign_entries(self.target)
                if foreign and not overwrite:
                    shown = ", ".join(repr(f) for f in foreign[:3])
                    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                    raise ValueError(
                        f"output folder {str(self.target)!r} holds files manytask did not "
                        f"write ({shown}{more}); choose a new or empty folder, or pass "
                        "--overwrite (overwrite=True) to replace the folder and everything in it"
                    )
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let another merge into ``target`` start (after the result is in place, or after
        a refusal: then a parent folder this object created is removed if still empty)."""
        self._lock.release()
        if not self.target.exists():
            for folder in getattr(self, "_made", []):  # deepest first; only if empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        self._made = []

    def __enter__(self) -> Path:
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
        try:
            if exc_type is not None:
                shutil.rmtree(self.path, ignore_errors=True)
                return
            self._replace(self.path)
        finally:
            self.release()

    def _replace(self, new: Path) -> None:
        files = written_files(new)
        manifest = {"written_by": "manytask merge", "files": files}
        (new / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.chmod(new, 0o755)  # mkdtemp makes it private
        if not self.target.exists():
            os.rename(new, self.target)
        elif _exchange(new, self.target):
            # the old result now sits at the temporary path: one step, never neither
            _between_renames()
            shutil.rmtree(new, ignore_errors=True)
        else:
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
            _between_renames()
            os.rename(new, self.target)
            shutil.rmtree(old, ignore_errors=True)


def output_lock(target: Path) -> FolderLock:
    """The lock of merges into ``target``: ``.NAME.lock`` beside it (the folder itself is
    replaced whole, so its lock cannot live inside it)."""
    return FolderLock(target.parent / f".{target.name}.lock", folder=target,
                      what="output folder", user="another merge")


def _make_parent(parent: Path) -> list[Path]:
    """Create ``parent`` (and its parents) if missing; the folders created, deepest first."""
    missing = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    return missing


def recover(target: Path) -> list[str]:
    """Repair what a killed write left beside ``target``; return one note per action.

    A missing ``target`` with an ``.NAME.old-*`` sibling was killed between its two renames:
    the old result is renamed back. Every other ``.NAME.partial-*`` (a killed write, or the
    old result after an exchange) and ``.NAME.old-*`` (a replaced result) is removed.
    """
    parent, name = target.parent, target.name
    if not parent.is_dir():
        return []
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    partials = list(parent.glob(f".{name}.partial-*"))
    notes = []
    if olds and not target.exists():
        os.rename(olds[-1], target)
        notes.append(
            f"restored the previous result {str(target)!r} from {olds[-1].name} "
            "(a write was killed between its renames)"
        )
        olds = olds[:-1]
    for left in [*olds, *partials]:
        shutil.rmtree(left, ignore_errors=True)
        notes.append(f"removed {left.name}, left by a killed or replaced write of {name!r}")
    return notes

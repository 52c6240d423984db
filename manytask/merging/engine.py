"""Plan a merge from headers alone, then stream it tensor by tensor, chunk by chunk.

:func:`plan_tensors` checks everything that can be checked before loading a single tensor:
missing and extra tensors, shape and dtype mismatches, and vocabulary-size differences
(``embed_mismatch``). :func:`run` then, for each output tensor, reads only the matching rows
of the inputs (in chunks of about :data:`CHUNK_ELEMENTS` elements), checks them for NaN and
inf, lets the method compute what it needs and writes the merged rows to a sink. Peak memory
is a few chunks per input, not a model, and not even a whole tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..finite import NonFiniteTensorError, check_finite
from .methods import Chunk, MergeMethod
from .selection import OrderStatistics, select
from .sources import Source, TensorInfo

# Rows per chunk are chosen so that one input's chunk holds about this many elements (small
# enough to stay in cache and in the allocator's reused memory). It is fixed, not tuned per
# run, because random methods seed their masks per chunk.
CHUNK_ELEMENTS = 1 << 20
# Tensors up to this size are read once and kept for every pass of a multi-pass method.
CACHE_ELEMENTS = 1 << 22
# Rows read to sample the magnitudes of a tensor too large to cache.
SAMPLE_ROWS = 256
VOCAB_NAMES = re.compile(r"(embed|wte|word_embeddings|lm_head|tok_embeddings|shared\.weight"
                         r"|(^|\.)output\.weight$)")


class Sink(Protocol):
    def begin(self, name: str) -> None: ...

    def write(self, rows: Tensor) -> None: ...


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where it comes from and how it is produced."""

    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    compute_dtype: torch.dtype
    merged: bool  # False: copied from the reference model (integer/bool buffers)
    rows: tuple[int | None, ...]  # rows available in each model (None: all of them)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def chunks(self) -> list[tuple[int | None, int | None]]:
        if len(self.shape) < 2:
            return [(None, None)]
        row = self.numel // max(self.shape[0], 1)
        step = max(1, CHUNK_ELEMENTS // max(row, 1))
        return [(s, min(s + step, self.shape[0])) for s in range(0, self.shape[0], step)] or [
            (0, 0)
        ]


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def plan_tensors(
    reference: Source,
    models: Sequence[Source],
    *,
    out_dtype: torch.dtype | None = None,
    embed_mismatch: str = "error",
    dtype_mismatch: str = "error",
) -> list[TensorJob]:
    """Validate the inputs against ``reference`` (the base, else the first model) from their
    headers, and list the output tensors. Raises ``ValueError`` naming the tensor and model."""
    ref_keys = reference.keys()
    if not ref_keys:
        raise ValueError(f"{reference.label!r} holds no tensor: there is nothing to merge")
    ref_set = set(ref_keys)
    for m in models:
        keys = set(m.keys())
        missing = sorted(ref_set - keys)
        extra = sorted(keys - ref_set)
        if missing:
            raise ValueError(
                f"model {m.label!r} lacks {len(missing)} tensor(s) of {reference.label!r}: "
                f"{_listing(missing)}"
            )
        if extra:
            raise ValueError(
                f"model {m.label!r} has {len(extra)} tensor(s) that {reference.label!r} lacks: "
                f"{_listing(extra)}"
            )
    jobs = []
    for name in ref_keys:
        ref = reference.info(name)
        infos = [m.info(name) for m in models]
        rows = tuple(_check_shape(name, ref, info, m, reference, embed_mismatch)
                     for info, m in zip(infos, models, strict=True))
        floating = ref.dtype.is_floating_point
        for info, m in zip(infos, models, strict=True):
            if info.dtype == ref.dtype:
                continue
            if not (floating and info.dtype.is_floating_point) or dtype_mismatch != "cast":
                hint = " (set dtype_mismatch: cast to allow)" if floating and \
                    info.dtype.is_floating_point else ""
                raise ValueError(
                    f"tensor {name!r}: model {m.label!r} stores {info.dtype}, "
                    f"{reference.label!r} stores {ref.dtype}{hint}"
                )
        wide = any(i.dtype == torch.float64 for i in [ref, *infos])
        jobs.append(
            TensorJob(
                name=name,
                shape=ref.shape,
                out_dtype=(out_dtype if floating and out_dtype is not None else ref.dtype),
                compute_dtype=torch.float64 if wide else torch.float32,
                merged=floating,
                rows=rows,
            )
        )
    return jobs


def _check_shape(
    name: str, ref: TensorInfo, info: TensorInfo, model: Source, reference: Source, mode: str
) -> int | None:
    if info.shape == ref.shape:
        return None
    vocab_like = (
        len(info.shape) == len(ref.shape) >= 1
        and info.shape[1:] == ref.shape[1:]
        and VOCAB_NAMES.search(name) is not None
    )
    if vocab_like:
        if mode == "base":
            return min(info.shape[0], ref.shape[0])
        raise ValueError(
            f"tensor {name!r}: model {model.label!r} has {info.shape[0]} vocabulary rows, "
            f"{reference.label!r} has {ref.shape[0]}; set embed_mismatch: base to keep the "
            "reference's vocabulary (extra rows dropped, missing rows taken from it)"
        )
    raise ValueError(
        f"tensor {name!r}: model {model.label!r} has shape {info.shape}, "
        f"{reference.label!r} has {ref.shape}"
    )


def _finite(x: Tensor, name: str, label: str, start: int | None) -> Tensor:
    # A sum is finite only if every element is (NaN and inf propagate), and costs a fraction of
    # isfinite(); the exact, slower search runs only to locate a culprit.
    if x.dtype.is_floating_point and not bool(torch.isfinite(x.sum())):
        bad_mask = ~torch.isfinite(x)
        if bool(bad_mask.any()):
            bad = int(bad_mask.nonzero()[0, 0]) + (start or 0)
            where = f"row {bad}" if x.dim() > 1 else f"element {bad}"
            raise NonFiniteTensorError(
                f"tensor {name!r} of model {label!r} contains NaN or inf (first at {where})"
            )
    return x


class _Loader:
    """Reads chunks of one job, from every model (and the base when the method needs it).

    Tensors of at most :data:`CACHE_ELEMENTS` elements are read once and kept for all passes;
    larger ones (embeddings) are re-read on each pass, which keeps memory bounded.
    """

    def __init__(self, job: TensorJob, reference: Source, base: Source | None,
                 models: Sequence[Source]):
        self.job, self.reference, self.base, self.models = job, reference, base, models
        self.spans = job.chunks()
        self.cached = job.numel <= CACHE_ELEMENTS
        self._cache: dict[int, Chunk] = {}

    def _rows(self, src: Source, avail: int | None, start: int | None,
              stop: int | None) -> Tensor:
        name, dtype = self.job.name, self.job.compute_dtype
        if avail is None or (stop is not None and stop <= avail):
            x = src.read(name, start, stop)
        else:  # vocabulary mismatch: the reference supplies rows this model lacks
            lo = start or 0
            hi = self.job.shape[0] if stop is None else stop
            parts = []
            if lo < avail:
                parts.append(src.read(name, lo, avail).to(dtype))
            parts.append(self.reference.read(name, max(lo, avail), hi).to(dtype))
            x = torch.cat(parts)
        y = x.to(dtype)
        if not src.fresh and y.data_ptr() == x.data_ptr():
            y = y.clone()  # own it: methods turn inputs into deltas in place
        return _finite(y, name, src.label, start)

    def load(self, index: int, start: int | None, stop: int | None) -> Chunk:
        base = None if self.base is None else self._rows(self.base, None, start, stop)
        inputs = [self._rows(m, self.job.rows[i], start, stop)
                  for i, m in enumerate(self.models)]
        return Chunk(self.job.name, index, start or 0, stop or 0, base, inputs,
                     retained=self.cached and index >= 0)

    def chunk(self, index: int) -> Chunk:
        if index in self._cache:
            return self._cache[index]
        start, stop = self.spans[index]
        chunk = self.load(index, start, stop)
        if self.cached:
            self._cache[index] = chunk
        return chunk

    def sample_rows(self, count: int, generator: torch.Generator) -> Chunk:
        """A chunk of ``count`` random rows (for sampling tensors too large to cache)."""
        rows = self.job.shape[0]
        picks = torch.randperm(rows, generator=generator)[: min(count, rows)].sort().values
        parts = [self.load(-1, r, r + 1) for r in picks.tolist()]
        base = None if self.base is None else torch.cat([p.base for p in parts])  # type: ignore[misc]
        inputs = [torch.cat([p.inputs[i] for p in parts]) for i in range(len(self.models))]
        return Chunk(self.job.name, -1, 0, 0, base, inputs)

    def __iter__(self) -> Any:
        return (self.chunk(i) for i in range(len(self.spans)))


def _order_statistics(
    job: TensorJob, loader: _Loader, ranks: dict[int, list[int]]
) -> dict[int, list[float]]:
    if loader.cached:  # the whole tensor is in memory anyway: select on it directly
        chunks = list(loader)
        return {i: select(torch.cat([c.magnitude(i).reshape(-1) for c in chunks]), r,
                          nonnegative=True, overwrite=True)  # the cat is a fresh copy
                for i, r in ranks.items()}
    stats = {i: OrderStatistics(job.numel, r, nonnegative=True) for i, r in ranks.items()}
    gen = torch.Generator().manual_seed(0x5EED)
    if any(s.needs_sample for s in stats.values()):  # read only a few hundred random rows
        chunk = loader.sample_rows(SAMPLE_ROWS, gen)
        for i, s in stats.items():
            s.add_sample(chunk.magnitude(i), gen)
        for s in stats.values():
            s.bracket()
    pending = dict(stats)
    while pending:
        for chunk in loader:
            for i, s in pending.items():
                s.count(chunk.magnitude(i))
        pending = {i: s for i, s in pending.items() if not s.resolve()}
    return {i: s.values for i, s in stats.items()}


def run(
    method: MergeMethod | Callable[[TensorJob], MergeMethod],
    jobs: Sequence[TensorJob],
    reference: Source,
    base: Source | None,
    models: Sequence[Source],
    sink: Sink,
    progress: Callable[[int, int, str], None] | None = None,
) -> None:
    """Merge every job into ``sink``, one tensor at a time. ``method`` is one method for all
    tensors, or gives each job its own (parameters that vary by layer or name)."""
    chooser = (lambda job: method) if isinstance(method, MergeMethod) else method
    for n, job in enumerate(jobs):
        tensor_method = chooser(job)
        use_base = base if tensor_method.base in ("required", "optional") else None
        if progress is not None:
            progress(n, len(jobs), job.name)
        sink.begin(job.name)
        if not job.merged:
            sink.write(reference.read(job.name).to(job.out_dtype))
            continue
        loader = _Loader(job, reference, use_base, models)
        plan = tensor_method.plan(job.name, job.shape)
        state: dict[str, Any] = {}
        if plan.ranks:
            state["order"] = _order_statistics(job, loader, plan.ranks)
        if plan.observe:
            for p in range(plan.passes):
                state["pass"] = p
                for chunk in loader:
                    tensor_method.observe(chunk, state)
        for chunk in loader:
            out = tensor_method.combine(chunk, state)
            sink.write(out.to(job.out_dtype))
            del out


class MemorySink:
    """Collects the merged tensors in a dict (for in-memory merges of small models)."""

    def __init__(self, jobs: Sequence[TensorJob]):
        self._shapes = {j.name: j.shape for j in jobs}
        self._parts: dict[str, list[Tensor]] = {}
        self._current = ""

    def begin(self, name: str) -> None:
        self._current = name
        self._parts[name] = []

    def write(self, rows: Tensor) -> None:
        self._parts[self._current].append(check_finite(rows, self._current, "merge output"))

    def result(self) -> dict[str, Tensor]:
        out = {}
        for name, parts in self._parts.items():
            t = parts[0] if len(parts) == 1 else torch.cat(parts)
            out[name] = t.reshape(self._shapes[name])
        return out

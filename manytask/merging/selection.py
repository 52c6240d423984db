"""Exact order statistics of a tensor, in memory (:func:`select`) or seen in chunks.

Magnitude pruning (TIES, breadcrumbs) needs the k-th largest ``|delta|`` of each tensor. A full
sort costs about 90 elementwise passes on a 16.7 M-element tensor here and ``torch.kthvalue``
about 15 (see design.md); NumPy's ``partition`` (a vectorised quickselect) about 2 on the
values' bit patterns. :func:`select` uses it on a tensor held in memory. For a tensor too large
to hold, :class:`OrderStatistics` finds the *exact* same value in a few passes over its chunks:

1. sample ``S`` of the values (the engine: from a few hundred random rows) and sort them;
2. bracket the wanted rank from the sample's order statistics, with a margin of four standard
   deviations of the sample rank, and count, chunk by chunk, the elements below the bracket
   and gather those inside it (a few percent of the tensor);
3. if the wanted rank falls among the gathered elements, :func:`select` on them is the answer;
   otherwise (rare) the bracket is replaced by the open side it missed and step 2 is repeated.

Ties are handled: a bracket whose ends are equal only counts, it never gathers. The result is
the value ``torch.kthvalue(x.flatten(), rank + 1)`` would return, whatever the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SAMPLE_SIZE = 16384
MARGIN_SIGMAS = 4.0


def select(
    values: Tensor, ranks: Sequence[int], *, nonnegative: bool = False, overwrite: bool = False
) -> list[float]:
    """Exact ascending 0-based order statistics ``ranks`` of the 1-D floating ``values``.

    By NumPy's ``partition`` (introselect, vectorised for 32- and 64-bit types), one rank at a
    time on the part of the array right of the previous one. ``nonnegative``: the caller
    guarantees ``values >= 0`` (magnitudes); their bit patterns then order like the values
    and are selected as integers, about twice as fast as floats here. ``overwrite``: the
    caller's scratch copy may be reordered in place (no second copy is made).
    """
    flat = values.reshape(-1).contiguous()
    n = flat.numel()
    for r in ranks:
        if not 0 <= r < n:
            raise ValueError(f"rank {r} out of range for {n} elements")
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.double()
    # partition works in place: on a copy, unless the caller hands over its scratch values
    array = flat.numpy() if overwrite else flat.numpy().copy()
    if nonnegative:
        array = array.view(np.int32 if array.dtype == np.float32 else np.int64)
    found: dict[int, float] = {}
    start = 0
    for r in sorted(set(int(r) for r in ranks)):
        part = array[start:]
        part.partition(r - start)
        found[r] = part[r - start : r - start + 1].view(flat.numpy().dtype).item()
        start = r + 1
    return [found[int(r)] for r in ranks]


@dataclass
class _Rank:
    rank: int  # 0-based ascending rank among all n elements
    lo: float = -math.inf
    hi: float = math.inf
    lo_strict: bool = False  # bracket excludes lo itself (after re-opening)
    hi_strict: bool = False
    below: int = 0
    inside: int = 0  # elements in the bracket so far, the first ``inside`` of ``pool``
    pool: np.ndarray | None = None
    capacity: int = 0  # expected number inside, for the first allocation of ``pool``
    value: float | None = None

    def gather(self, values: np.ndarray, mask: np.ndarray | None) -> None:
        """Append ``values[mask]`` to the pool.

        The pool is one buffer grown by doubling rather than a list of per-chunk pieces:
        small long-lived pieces allocated between each chunk's large temporaries fragment
        the heap, which then grows by a chunk per chunk (measured: 1 GB for a 65 M-element
        tensor whose pool was 60 MB).
        """
        count = values.size if mask is None else int(np.count_nonzero(mask))
        need = self.inside + count
        if self.pool is None or need > self.pool.size or self.pool.dtype != values.dtype:
            grown = np.empty(max(need, self.capacity, 2 * self.inside), dtype=values.dtype)
            if self.pool is not None:
                grown[: self.inside] = self.pool[: self.inside]
            self.pool = grown
        target = self.pool[self.inside : need]
        if mask is None:
            target[...] = values
        else:
            np.compress(mask, values, out=target)
        self.inside = need


class OrderStatistics:
    """Exact ascending order statistics ``ranks`` of ``n`` values seen in chunks.

    Usage: :meth:`add_sample` of some of the values, :meth:`bracket`; then repeat {feed every
    chunk to :meth:`count`; :meth:`resolve`} until it returns True; read :attr:`values`.
    Chunks must be 1-D views of the same values in the same order on every pass.
    """

    def __init__(self, n: int, ranks: Sequence[int], *, sample_size: int = SAMPLE_SIZE,
                 nonnegative: bool = False):
        if n <= 0:
            raise ValueError(f"order statistics of an empty tensor (n={n})")
        for r in ranks:
            if not 0 <= r < n:
                raise ValueError(f"rank {r} out of range for {n} elements")
        self.n = n
        self._nonnegative = nonnegative
        # Small inputs: gather everything in one counting pass, no sampling.
        self._exhaustive = n <= 4 * sample_size
        self._ranks = [_Rank(int(r), capacity=n if self._exhaustive else 0) for r in ranks]
        self._sample_size = sample_size
        self._samples: list[Tensor] = []

    @property
    def needs_sample(self) -> bool:
        return not self._exhaustive

    def add_sample(self, values: Tensor, generator: torch.Generator) -> None:
        """Use (a random subset of at most ``sample_size`` of) ``values`` as the sample.

        The engine passes a few hundred random rows: the bracket may then miss more often
        than with a sample drawn from every element (rows are clusters), which costs a
        counting pass, never exactness.
        """
        if self._exhaustive:
            return
        flat = values.reshape(-1)
        if flat.numel() > self._sample_size:
            flat = flat[torch.randint(flat.numel(), (self._sample_size,), generator=generator)]
        self._samples.append(flat.double())

    def bracket(self) -> None:
        """Set each rank's bracket from the sample (or leave it open for small inputs)."""
        if self._exhaustive:
            return
        sample = torch.sort(torch.cat(self._samples)).values
        self._samples = []
        s = sample.numel()
        for r in self._ranks:
            q = r.rank / max(self.n - 1, 1)
            half = MARGIN_SIGMAS * math.sqrt(s * q * (1 - q)) + 8
            lo_i = math.floor(q * (s - 1) - half)
            hi_i = math.ceil(q * (s - 1) + half)
            r.lo = -math.inf if lo_i < 0 else float(sample[lo_i])
            r.hi = math.inf if hi_i >= s else float(sample[hi_i])
            # The sample's share inside the bracket estimates the pool's size (ties included).
            share = (min(hi_i, s - 1) - max(lo_i, 0) + 1) / s
            r.capacity = int(1.25 * share * self.n) + 1024

    def count(self, chunk: Tensor) -> None:
        """Count below each unresolved bracket and gather the values inside it."""
        # In NumPy: its comparisons and boolean indexing take about half torch's time here.
        flat = chunk.reshape(-1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.double()
        v = flat.numpy()
        for r in self._ranks:
            if r.value is not None:
                continue
            if r.lo == r.hi:  # degenerate bracket: a tie, counting is enough
                below = int(np.count_nonzero(v < r.lo))
                r.below += below
                r.inside += int(np.count_nonzero(v <= r.hi)) - below
                continue
            mask: np.ndarray | None = None
            if r.lo > -math.inf:
                mask = v > r.lo if r.lo_strict else v >= r.lo
                r.below += v.size - int(np.count_nonzero(mask))
            if r.hi < math.inf:
                high = v < r.hi if r.hi_strict else v <= r.hi
                mask = high if mask is None else np.logical_and(mask, high, out=mask)
            r.gather(v, mask)

    def resolve(self) -> bool:
        """Fix the ranks found; re-open the missed ones. True when all are known."""
        done = True
        for r in self._ranks:
            if r.value is not None:
                continue
            k = r.rank - r.below
            if 0 <= k < r.inside:
                if r.lo == r.hi:
                    r.value = r.lo
                else:
                    assert r.pool is not None
                    pool = torch.from_numpy(r.pool[: r.inside])
                    r.value = select(pool, [k], nonnegative=self._nonnegative, overwrite=True)[0]
            else:
                done = False
                # The answer is outside the bracket: open the side it missed.
                # Comparisons run in the chunk's dtype, so exclusion is a strict comparison
                # rather than a nudged float bound.
                if k < 0:
                    r.lo, r.hi, r.lo_strict, r.hi_strict = -math.inf, r.lo, False, not r.lo_strict
                else:
                    r.lo, r.hi, r.lo_strict, r.hi_strict = r.hi, math.inf, not r.hi_strict, False
            r.below, r.inside, r.pool = 0, 0, None
        return done

    @property
    def values(self) -> list[float]:
        out = []
        for r in self._ranks:
            if r.value is None:
                raise RuntimeError("order statistics not resolved yet")
            out.append(r.value)
        return out

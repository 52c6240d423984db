"""Exact order statistics of a tensor seen in chunks, by a sampled bracket and counting.

Magnitude pruning (TIES, breadcrumbs) needs the k-th largest ``|delta|`` of each tensor. A full
sort costs about 90 elementwise passes on a 16.7 M-element tensor here and ``torch.kthvalue``
about 15 (see design.md). This module finds the *exact* same value in a few passes:

1. sample ``S`` elements uniformly (across all chunks) and sort the sample (small);
2. bracket the wanted rank from the sample's order statistics, with a margin of four standard
   deviations of the sample rank, and count, chunk by chunk, the elements below the bracket
   and gather those inside it (a few percent of the tensor);
3. if the wanted rank falls among the gathered elements, ``kthvalue`` on them is the answer;
   otherwise (rare) the bracket is replaced by the open side it missed and step 2 is repeated.

Ties are handled: a bracket whose ends are equal only counts, it never gathers. The result is
the value ``torch.kthvalue(x.flatten(), rank + 1)`` would return, whatever the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

SAMPLE_SIZE = 16384
MARGIN_SIGMAS = 4.0


@dataclass
class _Rank:
    rank: int  # 0-based ascending rank among all n elements
    lo: float = -math.inf
    hi: float = math.inf
    lo_strict: bool = False  # bracket excludes lo itself (after re-opening)
    hi_strict: bool = False
    below: int = 0
    inside: int = 0
    gathered: list[Tensor] = field(default_factory=list)
    value: float | None = None


class OrderStatistics:
    """Exact ascending order statistics ``ranks`` of ``n`` values seen in chunks.

    Usage: feed every chunk to :meth:`sample`, call :meth:`bracket`; then repeat {feed every
    chunk to :meth:`count`; :meth:`resolve`} until it returns True; read :attr:`values`.
    Chunks must be 1-D views of the same values in the same order on every pass.
    """

    def __init__(self, n: int, ranks: Sequence[int], *, sample_size: int = SAMPLE_SIZE):
        if n <= 0:
            raise ValueError(f"order statistics of an empty tensor (n={n})")
        for r in ranks:
            if not 0 <= r < n:
                raise ValueError(f"rank {r} out of range for {n} elements")
        self.n = n
        self._ranks = [_Rank(int(r)) for r in ranks]
        # Small inputs: gather everything in one counting pass, no sampling.
        self._exhaustive = n <= 4 * sample_size
        self._sample_size = sample_size
        self._samples: list[Tensor] = []
        self._seen = 0

    @property
    def needs_sample(self) -> bool:
        return not self._exhaustive

    def sample(self, chunk: Tensor, generator: torch.Generator) -> None:
        """Draw this chunk's share of the uniform sample."""
        m = chunk.numel()
        if self._exhaustive or m == 0:
            return
        # Share proportional to the chunk's size, so the union is close to uniform.
        take = max(1, round(self._sample_size * m / self.n))
        idx = torch.randint(m, (take,), generator=generator)
        self._samples.append(chunk.reshape(-1)[idx].double())
        self._seen += m

    def add_sample(self, values: Tensor, generator: torch.Generator) -> None:
        """Use (a random subset of at most ``sample_size`` of) ``values`` as the sample.

        For values read from a few random rows rather than from every chunk: the bracket may
        then miss more often (rows are clusters), which costs a pass, never exactness.
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

    def count(self, chunk: Tensor) -> None:
        """Count below each unresolved bracket and gather the values inside it."""
        flat = chunk.reshape(-1)
        for r in self._ranks:
            if r.value is not None:
                continue
            if r.lo == r.hi:  # degenerate bracket: a tie, counting is enough
                below = int(torch.count_nonzero(flat < r.lo))
                r.below += below
                r.inside += int(torch.count_nonzero(flat <= r.hi)) - below
                continue
            mask: Tensor | None = None
            if r.lo > -math.inf:
                mask = flat > r.lo if r.lo_strict else flat >= r.lo
                r.below += flat.numel() - int(torch.count_nonzero(mask))
            if r.hi < math.inf:
                high = flat < r.hi if r.hi_strict else flat <= r.hi
                mask = high if mask is None else mask.logical_and_(high)
            inside = flat if mask is None else flat[mask]
            r.inside += inside.numel()
            r.gathered.append(inside.clone() if mask is None else inside)

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
                    pool = torch.cat(r.gathered)
                    r.value = float(torch.kthvalue(pool, k + 1).values)
            else:
                done = False
                # The answer is outside the bracket: open the side it missed.
                # Comparisons run in the chunk's dtype, so exclusion is a strict comparison
                # rather than a nudged float bound.
                if k < 0:
                    r.lo, r.hi, r.lo_strict, r.hi_strict = -math.inf, r.lo, False, not r.lo_strict
                else:
                    r.lo, r.hi, r.lo_strict, r.hi_strict = r.hi, math.inf, not r.hi_strict, False
            r.below, r.inside, r.gathered = 0, 0, []
        return done

    @property
    def values(self) -> list[float]:
        out = []
        for r in self._ranks:
            if r.value is None:
                raise RuntimeError("order statistics not resolved yet")
            out.append(r.value)
        return out


def kth_smallest(x: Tensor, rank: int, *, chunks: int = 1, seed: int = 0) -> float:
    """The exact value of ascending 0-based ``rank`` of ``x`` (a convenience over the class)."""
    flat = x.reshape(-1)
    parts = list(torch.chunk(flat, chunks)) if chunks > 1 else [flat]
    stats = OrderStatistics(flat.numel(), [rank])
    gen = torch.Generator().manual_seed(seed)
    if stats.needs_sample:
        for p in parts:
            stats.sample(p, gen)
        stats.bracket()
    while True:
        for p in parts:
            stats.count(p)
        if stats.resolve():
            return stats.values[0]

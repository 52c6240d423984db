"""Sparsify-then-combine task-vector methods: TIES, DARE, DELLA and Model Breadcrumbs.

All follow one recipe on the task vectors ``tau_i = theta_i - theta_0`` of each tensor:

1. *sparsify* each ``tau_i`` (unweighted): keep its top-``density`` magnitudes (TIES), drop at
   random (DARE), drop at random with magnitude-ranked probabilities (DELLA), or cut both the
   smallest and the largest magnitudes (breadcrumbs);
2. *combine*: either the weighted sum ``sum_i w_i tau_i'`` (the ``*_linear`` variants and
   breadcrumbs), or TIES' sign election and disjoint mean over the agreeing models;
3. ``theta = theta_0 + lambda * combined``.

Magnitude thresholds are exact order statistics over the whole tensor, found by selection
(:mod:`~manytask.merging.selection`), never by a sort; a mask keeps the elements whose
magnitude is at least the k-th largest (with ties, a few more than k).

Conventions (``convention: paper`` by default; ``convention: mergekit`` follows mergekit 0.1.5's
formulas for users moving over, and gives its results exactly for TIES and breadcrumbs; DARE
and DELLA draw their random masks from our own seeded generators, so the draws differ):

=====================  ===========================================  ===============================
                       ``paper``                                    ``mergekit``
=====================  ===========================================  ===============================
sign election          on the unweighted sparsified task vectors    on the weighted ones
elected sign of a 0    0: nothing is merged there                   +1
sum
``normalize`` default  True with sign election (disjoint *mean*),   True for ties and della only
                       False without
``rescale`` default    ``inverse``: each kept element divided by    ``l1``: the pruned vector
(DARE, DELLA)          its keep probability (DARE; DELLA)           rescaled to the original L1
=====================  ===========================================  ===============================

``lambda`` scales after normalisation in both. ``rescale: none`` turns rescaling off. With
``normalize``, the disjoint mean is weighted: ``sum_{i in A} w_i tau_i' / sum_{i in A} w_i``
over the agreeing models ``A`` (the paper's mean when all weights are 1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..params import Param
from .averaging import LAMBDA, WEIGHT
from .base import Chunk, MergeMethod, TensorPlan, register

CONVENTION = Param("choice", "paper", choices=("paper", "mergekit"), doc="see module docstring")
NORMALIZE = Param("bool", False, doc="divide by the summed weights (of agreeing models)")
SEED = Param("int", 0, low=0, doc="seed of the random masks")
RESCALE = Param("choice", "inverse", choices=("inverse", "l1", "none", True, False),
                doc="rescaling of kept (true/false: mergekit's spelling)")
INT8_MASK = Param("bool", False, doc="accepted for mergekit configs; masks are exact either way")
DENSITY_REQUIRED = Param(
    "float", low=0.0, high=1.0, low_open=True, doc="fraction of each task vector kept"
)


def _density(default: float) -> Param:
    return Param("float", default, low=0.0, high=1.0, low_open=True, doc="fraction kept")


def _row_order(a: Tensor) -> Tensor:
    """Column indices that sort each row of ``a >= 0`` (viewed as rows of its first dim).

    Exact per-row ranks need one sort per row (n log n), the cost that makes DELLA the
    slowest method here. For float32, non-negative floats order like their bit patterns read
    as integers, so each element becomes one int64 key ``bits << 32 | column`` and NumPy sorts
    the keys by value (its vectorised sort, about 12x faster here than ``torch.sort`` with
    indices); the column comes back from the low bits. Ties are ordered by column for float32
    (in some fixed order for float64, sorted by ``argsort``).
    """
    rows = a.reshape(a.shape[0], -1) if a.dim() > 1 else a.reshape(1, -1)
    n = rows.shape[1]
    values = rows.contiguous().numpy()
    if values.dtype == np.float32:
        keys = values.view(np.int32).astype(np.int64)
        keys <<= 32
        keys |= np.arange(n, dtype=np.int64)
        keys.sort(axis=1)
        return torch.from_numpy(keys).bitwise_and_(0xFFFFFFFF)
    return torch.from_numpy(np.argsort(values.view(np.int64), axis=1))  # float64


class SparseTaskVectors(MergeMethod):
    """Shared machinery; concrete methods set ``sparsify``, ``consensus`` and parameters."""

    sparsify: ClassVar[str | None] = None  # None, "magnitude", "random", "outliers", "magprune"
    consensus: ClassVar[bool] = False
    mergekit_normalize: ClassVar[bool] = False

    _convention: str = "paper"

    def default_overrides(self, given: Any) -> dict[str, Any]:
        mergekit = dict(given or {}).get("convention") == "mergekit"
        self._convention = "mergekit" if mergekit else "paper"
        out: dict[str, Any] = {
            "normalize": self.mergekit_normalize if mergekit else self.consensus
        }
        if self.sparsify in ("random", "magprune"):
            out["rescale"] = "l1" if mergekit else "inverse"
        return out

    def model_default_overrides(self) -> dict[str, Any]:
        # mergekit's density defaults to 1 (nothing trimmed) for every method and DELLA's
        # epsilon to 0.15; the paper's TIES trims to its k = 20 % and DARE/DELLA need both.
        if self._convention != "mergekit":
            return {}
        return {"density": 1.0, **({"epsilon": 0.15} if self.sparsify == "magprune" else {})}

    def check(self) -> None:
        rescale = self.params.get("rescale")
        if isinstance(rescale, bool):  # mergekit's spelling: true is its l1 rescaling
            random = self.sparsify in ("random", "magprune")
            default = "inverse" if random and self._convention == "paper" else "l1"
            self.params["rescale"] = default if rescale else "none"
        if self.params.get("rescale") == "inverse" and self.sparsify not in ("random",
                                                                             "magprune"):
            raise ValueError(
                f"{self.name}: rescale 'inverse' divides by keep probabilities, which only "
                "the random methods have; use 'l1' (mergekit's rescale: true) or 'none'"
            )
        if self.sparsify == "magprune":
            for i, m in enumerate(self.models):
                d, eps = m["density"], m["epsilon"]
                if d < 1 and not (d - eps > 0 and d + eps <= 1):
                    raise ValueError(
                        f"{self.name}: models[{i}]: density +/- epsilon must lie in (0, 1], "
                        f"got density={d}, epsilon={eps}"
                    )

    # -- planning -----------------------------------------------------------------------------
    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        n = 1
        for s in shape:
            n *= s
        ranks: dict[int, list[int]] = {}
        for i, m in enumerate(self.models):
            d = m.get("density", 1.0)
            if d >= 1:
                continue
            if self.sparsify == "magnitude":
                k = max(1, int(d * n))  # at least one element survives, as in mergekit
                ranks[i] = [n - k]
            elif self.sparsify == "outliers":
                keep = int(d * n)
                n_bot = max(0, n - keep - int(m["gamma"] * n))
                if keep > 0:
                    ranks[i] = [n_bot, n_bot + keep - 1]
        observe = self.params.get("rescale") == "l1"
        return TensorPlan(ranks=ranks, observe=observe)

    # -- the two steps ------------------------------------------------------------------------
    def _sparsified(self, chunk: Chunk, state: dict[str, Any], rescale: bool) -> Tensor:
        """Sparsified task vectors stacked as (K, *chunk_shape), in a new tensor.

        ``rescale``: divide kept entries by their keep probability (the paper's rescaling).
        """
        deltas = chunk.deltas
        out = torch.empty((len(deltas), *deltas[0].shape), dtype=deltas[0].dtype)
        order = state.get("order", {})
        for i, (d, m) in enumerate(zip(deltas, self.models, strict=True)):
            density = m.get("density", 1.0)
            if self.sparsify is None or density >= 1:
                out[i] = d
            elif self.sparsify == "magnitude":
                # |d| >= t as the float op |d| > (t less one ulp): float ops beat bool masks.
                below = torch.nextafter(torch.tensor(order[i][0], dtype=d.dtype),
                                        torch.tensor(-math.inf, dtype=d.dtype))
                torch.copysign(F.threshold(chunk.magnitude(i), float(below), 0.0), d,
                               out=out[i])
            elif self.sparsify == "outliers":
                if i not in order:  # int(density * n) == 0: nothing is kept
                    out[i] = 0
                    continue
                a = chunk.magnitude(i)
                lo, hi = order[i]
                torch.mul(d, (a >= lo).logical_and_(a <= hi), out=out[i])
            else:
                torch.mul(d, self._random_factor(chunk, i, density, m, rescale, state),
                          out=out[i])
        return out

    def _random_factor(
        self, chunk: Chunk, i: int, density: float, m: dict[str, Any], rescale: bool,
        state: dict[str, Any],
    ) -> Tensor:
        """Model ``i``'s random keep mask, divided by the keep probabilities if ``rescale``.

        Memoised per chunk, so a second pass over a chunk kept in memory reuses the draw; for
        a chunk read again on the second pass, :meth:`observe` leaves the mask in ``state``
        as bits (1/32 of the chunk), so it is not drawn (and, for DELLA, ranked) twice.
        """
        key = ("factor", i, rescale)
        if key in chunk.memo:
            return chunk.memo[key]
        d = chunk.deltas[i]
        bits = None if rescale else state.get("keep_bits", {}).pop((chunk.index, i), None)
        if bits is not None:
            mask = np.unpackbits(bits, count=d.numel())
            return torch.from_numpy(mask).to(d.dtype).reshape(d.shape)
        u = chunk.uniform(self.params["seed"], i, d)
        if self.sparsify == "random":
            # Float mask 1{u < p} as ceil(clamp(p - u, 0, 1)): cheap float ops, no bools.
            factor = u.neg_().add_(density).clamp_(0, 1).ceil_()
            if rescale:
                factor.div_(density)
        else:
            # magprune: the entry of in-row rank r (of n) is kept with probability
            # p_r = density - eps + 2 eps r / (n - 1). Draws are made in sorted order, where
            # p is one vector for every row, and the factors scattered back to the entries.
            order = _row_order(chunk.magnitude(i))
            u = u.reshape(order.shape)
            n = order.shape[1]
            eps = m["epsilon"]
            p = (torch.arange(n, dtype=d.dtype).mul_(2 * eps / (n - 1)).add_(density - eps)
                 if n > 1 else torch.full((1,), density, dtype=d.dtype))
            in_order = u.neg_().add_(p).clamp_(0, 1).ceil_()
            if rescale:
                in_order.div_(p)
            factor = torch.empty_like(in_order).scatter_(1, order, in_order).reshape(d.shape)
        chunk.memo[key] = factor
        return factor

    def _kept(self, chunk: Chunk, i: int, state: dict[str, Any]) -> Tensor:
        """0/1 mask (compute dtype) of the elements a magnitude or outlier cut keeps."""
        a = chunk.magnitude(i)
        order = state.get("order", {})
        if i not in order:  # outliers with int(density * n) == 0
            return torch.zeros_like(a)
        if self.sparsify == "magnitude":
            return (a >= order[i][0]).to(a.dtype)
        lo, hi = order[i]
        return (a >= lo).logical_and_(a <= hi).to(a.dtype)

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        # mergekit's "l1" rescaling: sum |tau| and sum |tau'| over the whole tensor.
        before, after = [], []
        for i, m in enumerate(self.models):
            a = chunk.magnitude(i).reshape(-1)
            before.append(float(a.sum()))
            density = m.get("density", 1.0)
            if density >= 1:
                after.append(before[-1])
                continue
            if self.sparsify in ("magnitude", "outliers"):
                after.append(float(a @ self._kept(chunk, i, state).reshape(-1)))
                continue
            mask = self._random_factor(chunk, i, density, m, False, state)  # 0/1 here
            after.append(float(a @ mask.reshape(-1)))
            if not chunk.retained:  # read again for combine: keep the mask as bits
                bits = np.packbits(mask.reshape(-1).to(torch.uint8).numpy())
                state.setdefault("keep_bits", {})[(chunk.index, i)] = bits
        state["l1_before"] = state.get("l1_before", 0) + torch.tensor(before, dtype=torch.float64)
        state["l1_after"] = state.get("l1_after", 0) + torch.tensor(after, dtype=torch.float64)

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        rescale = self.params.get("rescale", "none")
        kept = self._sparsified(chunk, state, rescale=rescale == "inverse")
        if rescale == "l1":
            for i in range(len(kept)):
                before, after = float(state["l1_before"][i]), float(state["l1_after"][i])
                if before >= 1e-7 and after >= 1e-7 and self.models[i].get("density", 1) < 1:
                    kept[i].mul_(before / after)
        weights = [self.weight(i) for i in range(len(kept))]
        k = len(weights)
        w = torch.tensor(weights, dtype=kept.dtype)
        flat = kept.reshape(k, -1)
        if not self.consensus:
            mixed = (w @ flat).reshape(kept.shape[1:])
            if self.params["normalize"]:
                total = sum(weights)
                mixed.div_(total if abs(total) >= 1e-8 else 1.0)
            return chunk.base.add(mixed, alpha=self.params["lambda"])
        # Sign election in float arithmetic (bool masks are several times slower). With the
        # elected sign e in {-1, 0, +1}, the agreeing part of tau_i is e * relu(e * tau_i).
        # Sums over the K models are products with a vector of ones: torch's sum(0) over a
        # short first dimension is about 5x slower than that matrix-vector product here.
        unit = all(x == 1.0 for x in weights)  # skip multiplications by 1 (exact either way)
        ones = torch.ones(k, dtype=kept.dtype)
        if self.params["convention"] == "mergekit":  # elect on the weighted vectors; 0 -> +1
            if not unit:
                flat.mul_(w.unsqueeze(1))
            elected = (ones @ flat).sign_().add_(0.5).sign_()  # (torch.where is slower)
            agreeing = flat.mul_(elected).relu_()  # (K, m): w_i * relu(e * tau_i)
            mixed = ones @ agreeing
        else:  # paper: elect on the unweighted vectors; a zero sum elects nothing
            elected = (ones @ flat).sign_()
            agreeing = flat.mul_(elected).relu_()  # relu(e * tau_i), unweighted
            mixed = (ones if unit else w) @ agreeing
        mixed.mul_(elected)
        if self.params["normalize"]:
            counted = agreeing.sign_()  # 1 where model i agrees (count_nonzero is slower)
            divisor = (ones if unit else w) @ counted  # summed agreeing weights
            if all(x > 0 for x in weights):
                # divisor is 0 only where no model agrees, where mixed is 0 too: any positive
                # divisor gives the same 0, and a clamp is cheaper than a masked fill.
                divisor.clamp_min_(1.0 if unit else min(weights))
            else:
                divisor.masked_fill_(divisor == 0, 1.0)
            mixed.div_(divisor)
        return chunk.base.add(mixed.reshape(kept.shape[1:]), alpha=self.params["lambda"])


_COMMON: dict[str, Param] = {"lambda": LAMBDA, "normalize": NORMALIZE, "convention": CONVENTION,
                             "int8_mask": INT8_MASK,
                             "rescale": dataclasses.replace(RESCALE, default="none")}


@register
class Ties(SparseTaskVectors):
    """TIES-Merging (Yadav et al., 2023, "TIES-Merging: Resolving Interference When Merging
    Models", Algorithm 1): trim each task vector to its top-``density`` magnitudes (the paper's
    k = 20% is the default), elect the sign of the summed trimmed vectors per parameter, and
    take the disjoint mean of the trimmed values that agree with it; then
    ``theta_0 + lambda * merged``."""

    name: ClassVar[str] = "ties"
    sparsify = "magnitude"
    consensus = True
    mergekit_normalize = True
    global_params: ClassVar[dict[str, Param]] = dict(_COMMON)
    model_params: ClassVar[dict[str, Param]] = {"weight": WEIGHT, "density": _density(0.2)}


@register
class DareLinear(SparseTaskVectors):
    """DARE with task arithmetic (Yu et al., 2024, "Language Models are Super Mario: Absorbing
    Abilities from Homologous Models as a Free Lunch", Sec. 3, the drop-and-rescale operation):
    drop each task-vector entry
    with probability ``1 - density``, divide the kept ones by ``density`` (which keeps the
    expectation), then ``theta_0 + lambda * sum_i w_i tau_i'``."""

    name: ClassVar[str] = "dare_linear"
    sparsify = "random"
    global_params: ClassVar[dict[str, Param]] = {**_COMMON, "rescale": RESCALE, "seed": SEED}
    model_params: ClassVar[dict[str, Param]] = {"weight": WEIGHT, "density": DENSITY_REQUIRED}


@register
class DareTies(DareLinear):
    """DARE followed by TIES' sign election and disjoint mean (Yu et al., 2024, Sec. 4.3,
    "DARE + TIES-Merging"): DARE replaces TIES' magnitude trimming."""

    name: ClassVar[str] = "dare_ties"
    consensus = True


@register
class DellaLinear(SparseTaskVectors):
    """DELLA's MagPrune with task arithmetic (Deep et al., 2024, "DELLA-Merging: Reducing
    Interference in Model Merging through Magnitude-Based Sampling", Sec. 3): within each row,
    rank the task-vector entries by magnitude; entry of normalised rank ``r`` in [0, 1] is kept
    with probability ``density - epsilon + 2 epsilon r`` (so the mean keep rate is ``density``)
    and divided by that probability.

    ``epsilon`` is the half-width of the keep-probability range, as in mergekit; in our reading
    of the paper its epsilon is the width of the whole range, so halve paper values. Ranks are
    exact per-row ranks (one sort per row, the cost that makes DELLA the slowest method).
    """

    name: ClassVar[str] = "della_linear"
    sparsify = "magprune"
    global_params: ClassVar[dict[str, Param]] = {**_COMMON, "rescale": RESCALE, "seed": SEED}
    model_params: ClassVar[dict[str, Param]] = {
        "weight": WEIGHT,
        "density": DENSITY_REQUIRED,
        "epsilon": Param("float", low=0.0, high=0.5, doc="half-width of keep probabilities"),
    }


@register
class Della(DellaLinear):
    """DELLA-Merging (Deep et al., 2024, Sec. 3): MagPrune, then TIES' sign election ("Elect")
    and disjoint mean ("Fuse"), then ``theta_0 + lambda * merged``."""

    name: ClassVar[str] = "della"
    consensus = True
    mergekit_normalize = True


@register
class Breadcrumbs(SparseTaskVectors):
    """Model Breadcrumbs (Davari and Belilovsky, 2024, "Model Breadcrumbs: Scaling Multi-Task
    Model Merging with Sparse Masks", Sec. 3): per tensor, mask out the ``gamma`` fraction of
    largest-magnitude task-vector entries (outliers) and the smallest ones, keeping a
    ``density`` fraction; then ``theta_0 + lambda * sum_i w_i tau_i'``. If
    ``density + gamma > 1`` the outlier cut shrinks so that ``density`` is kept, and ``gamma``
    defaults to mergekit's 0.01; both as mergekit, whose results this matches exactly."""

    name: ClassVar[str] = "breadcrumbs"
    sparsify = "outliers"
    global_params: ClassVar[dict[str, Param]] = dict(_COMMON)
    model_params: ClassVar[dict[str, Param]] = {
        "weight": WEIGHT,
        "density": DENSITY_REQUIRED,
        "gamma": Param("float", 0.01, low=0.0, high=1.0, doc="fraction of outliers removed"),
    }


@register
class BreadcrumbsTies(Breadcrumbs):
    """Breadcrumbs masks followed by TIES' sign election and disjoint mean."""

    name: ClassVar[str] = "breadcrumbs_ties"
    consensus = True

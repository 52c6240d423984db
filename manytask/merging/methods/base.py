"""The interface every merge method implements, the per-chunk view it works on, and a registry.

The engine merges one output tensor at a time, in *chunks* of whole rows (dimension 0), so that
memory stays at a few chunks times the number of inputs whatever the tensor's size. A method:

* declares its global and per-model parameters (:class:`~manytask.merging.params.Param`);
* says per tensor what whole-tensor statistics it needs (:meth:`MergeMethod.plan`): exact
  order statistics of each task vector's magnitudes (computed by the engine with
  :mod:`~manytask.merging.selection`), and/or a reduction pass of its own (:meth:`observe`);
* turns each chunk into output rows (:meth:`combine`), elementwise or row-wise.

Random methods draw from :meth:`Chunk.uniform`, seeded from (seed, tensor name, model,
chunk index) with a fixed chunk grid, so results do not depend on tensor order and two passes
over a chunk draw the same mask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from ...registry import Registry
from ..params import Param, resolve

# "required": the base is loaded and merged; "reference": it only supplies config files;
# "optional": loaded and used when given (e.g. NuSLERP between task vectors or raw weights).
BasePolicy = Literal["required", "reference", "optional"]


class Chunk:
    """Rows ``start:stop`` of one tensor from the base and every input model, in compute dtype.

    ``inputs`` are the models' weights; ``deltas`` their task vectors ``input - base``,
    computed in place on first use (after which ``inputs`` are no longer available: a method
    uses one view or the other, which halves the memory).
    """

    def __init__(
        self,
        name: str,
        index: int,
        start: int,
        stop: int,
        base: Tensor | None,
        inputs: list[Tensor],
        *,
        retained: bool = False,
    ):
        self.name = name
        # True when the engine keeps this chunk for later passes (tensors small enough to
        # cache): ``memo`` then survives to the next pass; otherwise the rows are read again.
        self.retained = retained
        self.index = index
        self.start = start
        self.stop = stop
        self.base = base
        self._inputs = inputs
        self._deltas: list[Tensor] | None = None
        # Per-chunk intermediate results a method may reuse on a later pass. It lives as long
        # as the chunk, i.e. across passes only for tensors small enough to be kept in memory.
        self.memo: dict[Any, Tensor] = {}

    @property
    def inputs(self) -> list[Tensor]:
        if self._deltas is not None:
            raise RuntimeError("chunk inputs were turned into deltas in place")
        return self._inputs

    @property
    def deltas(self) -> list[Tensor]:
        if self._deltas is None:
            if self.base is None:
                raise RuntimeError("task vectors need a base model")
            for x in self._inputs:
                x.sub_(self.base)
            self._deltas = self._inputs
        return self._deltas

    def magnitude(self, model: int) -> Tensor:
        """``|delta|`` of ``model`` (computed once per chunk)."""
        key = ("abs", model)
        if key not in self.memo:
            self.memo[key] = self.deltas[model].abs()
        return self.memo[key]

    def stacked_deltas(self) -> Tensor:
        """Task vectors as one (K, *chunk_shape) tensor."""
        return torch.stack(self.deltas)

    def uniform(self, seed: int, model: int, like: Tensor) -> Tensor:
        """Uniform draws in [0, 1) shaped and typed like ``like``, private to (seed, tensor,
        model, chunk).

        Drawn with NumPy's PCG64 rather than ``torch.rand``: the same resolution (24 random
        bits for float32, 53 for float64) at about 1.5x the speed here, which is most of
        DARE's cost beyond TIES'.
        """
        key = f"{seed}|{self.name}|{model}|{self.index}".encode()
        value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        rng = np.random.Generator(np.random.PCG64(value))
        dtype = np.float64 if like.dtype == torch.float64 else np.float32
        return torch.from_numpy(rng.random(tuple(like.shape), dtype=dtype)).to(like.dtype)


@dataclass
class TensorPlan:
    """What a method needs before combining a tensor.

    ``ranks``: model index -> ascending 0-based ranks of ``|delta|`` over the whole tensor; the
    engine puts the values in ``state["order"][model]``. ``observe``: run :meth:`observe` over
    all chunks (after the order statistics are known) before combining, ``passes`` times
    (``state["pass"]`` says which), for statistics that depend on earlier ones.
    """

    ranks: dict[int, list[int]] = field(default_factory=dict)
    observe: bool = False
    passes: int = 1


class MergeMethod:
    """Base class of the merge methods; subclasses are registered with :func:`register`."""

    name: ClassVar[str] = ""
    base: ClassVar[BasePolicy] = "required"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    global_params: ClassVar[dict[str, Param]] = {}
    model_params: ClassVar[dict[str, Param]] = {}

    def __init__(
        self,
        parameters: Mapping[str, Any] | None = None,
        model_parameters: Sequence[Mapping[str, Any] | None] = (),
        *,
        where: str = "merge",
    ):
        n = len(model_parameters)
        if n < self.min_models or (self.max_models is not None and n > self.max_models):
            want = (
                f"exactly {self.min_models}"
                if self.max_models == self.min_models
                else f"at least {self.min_models}"
                + (f" and at most {self.max_models}" if self.max_models else "")
            )
            raise ValueError(f"{where}: method {self.name!r} needs {want} model(s), got {n}")
        overrides = self.default_overrides(parameters)
        self.params = resolve(self.global_params, parameters, f"{where}: parameters", overrides)
        self.models = [
            resolve(
                self.model_params,
                p,
                f"{where}: models[{i}].parameters",
                self.model_default_overrides(),
            )
            for i, p in enumerate(model_parameters)
        ]
        self.check()

    # -- hooks --------------------------------------------------------------------------------
    def default_overrides(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults that depend on other given parameters (e.g. ``convention``)."""
        return {}

    def model_default_overrides(self) -> dict[str, Any]:
        return {}

    def check(self) -> None:
        """Cross-parameter validation; raise ``ValueError``."""

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan()

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        """Accumulate whole-tensor statistics into ``state`` (only if the plan asks)."""
        raise RuntimeError(f"{self.name}: plan asked for observe() but it is not defined")

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        """Merged rows of ``chunk`` (compute dtype)."""
        raise NotImplementedError  # abstract: every registered method overrides it

    def weight(self, model: int) -> float:
        return float(self.models[model].get("weight", 1.0))


M = TypeVar("M", bound=type[MergeMethod])
METHODS: Registry[type[MergeMethod]] = Registry("merge method")


def register(cls: M) -> M:
    """Class decorator: add ``cls`` under ``cls.name`` with its declared global parameters
    (the per-model ones stay on the class, ``model_params``)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    METHODS.add(cls.name, cls, cls.global_params)
    return cls


def available_methods() -> list[str]:
    """Names of all registered merge methods, sorted."""
    return METHODS.names()


def get_method(name: str) -> type[MergeMethod]:
    """The merge method called ``name``; an unknown name is a one-line error with a hint."""
    return METHODS.get(name)

"""Checks on every tensor written or loaded: finite, and of the dtype and shape expected.

A merge of finite inputs can still overflow (a float16 output, a huge ``lambda``); a last
optimizer step can overflow the weights; a hand-edited checkpoint can change a tensor's dtype.
Each would be written or loaded at exit 0 without these checks. A failure is a
:class:`NonFiniteTensorError` (or :class:`TensorMismatchError`) naming the tensor; callers
check before anything is renamed into place, so nothing is written.

This module imports nothing from the rest of the package: every layer may use it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class NonFiniteTensorError(ValueError):
    """A tensor holds NaN or inf."""


class TensorMismatchError(ValueError):
    """A loaded tensor's dtype or shape is not the one expected."""


def first_nonfinite(x: Tensor) -> int | None:
    """Flat index of the first NaN/inf element of ``x``, or ``None`` when all are finite.

    A sum is finite only if every element is (NaN and inf propagate) and costs a fraction of
    ``isfinite``; the exact search runs only when it is not (the float64 sum of huge finite
    float64 values may itself overflow, so the search confirms).
    """
    if not x.dtype.is_floating_point:
        return None
    if x.numel() == 0 or bool(torch.isfinite(x.sum(dtype=torch.float64))):
        return None
    bad = (~torch.isfinite(x)).reshape(-1).nonzero()
    return int(bad[0, 0]) if bad.numel() else None


def check_finite(x: Tensor, name: str, where: str) -> Tensor:
    """``x`` unchanged if finite; else :class:`NonFiniteTensorError` naming ``name``."""
    bad = first_nonfinite(x)
    if bad is not None:
        value = float(x.reshape(-1)[bad])
        raise NonFiniteTensorError(
            f"{where}: tensor {name!r} holds {value} (first at flat index {bad} of "
            f"{x.numel()}); refused, nothing written"
        )
    return x


def check_state(tensors: Mapping[str, Tensor], where: str) -> None:
    """Every tensor of ``tensors`` finite."""
    for name, value in tensors.items():
        check_finite(value, name, where)


def check_like(
    tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor], where: str
) -> None:
    """Every tensor of ``tensors`` finite and of the dtype and shape of its namesake in
    ``expected`` (the model or optimizer state it is loaded into); names in one and not the
    other are left to the caller, which reports them with the context it has."""
    for name, value in tensors.items():
        want = expected.get(name)
        if want is not None:
            if value.dtype != want.dtype:
                raise TensorMismatchError(
                    f"{where}: tensor {name!r} is {str(value.dtype).removeprefix('torch.')}, "
                    f"expected {str(want.dtype).removeprefix('torch.')}; refused"
                )
            if tuple(value.shape) != tuple(want.shape):
                raise TensorMismatchError(
                    f"{where}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                    f"{tuple(want.shape)}; refused"
                )
        check_finite(value, name, where)

"""A registry of training methods, picked by name with validated hyper-parameters."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .base import Balancer

_REGISTRY: dict[str, type[Balancer]] = {}

B = TypeVar("B", bound=type[Balancer])


def register(cls: B) -> B:
    """Class decorator adding a balancer to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"balancer name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of all registered balancers, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[Balancer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown balancer {name!r}; available: {', '.join(available())}"
        ) from None


def parameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of balancer ``name`` and their defaults."""
    sig = inspect.signature(get(name).__init__)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in sig.parameters.values()
        if p.name != "self"
    }


def build(name: str, params: Mapping[str, Any] | None = None) -> Balancer:
    """Instantiate balancer ``name``; unknown or out-of-range parameters raise ``ValueError``."""
    cls = get(name)
    params = dict(params or {})
    known = parameters(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"balancer {name!r} has no parameter(s) {unknown}; "
            f"its parameters are {sorted(known) or 'none'}"
        )
    return cls(**params)


def make_balancer(name: str, tasks: Sequence[str] | None = None, **params: Any) -> Balancer:
    """``make_balancer("cagrad", c=0.4)``: keyword form of :func:`build`. With ``tasks``, the
    method is set up for them at once, so its per-task state and learnable parameters exist
    before an optimizer is built (``make_balancer("uncertainty", tasks=["a", "b"])``)."""
    method = build(name, params)
    if tasks is not None:
        method.setup(tasks)
    return method


# ---------------------------------------------------------------------------- validation helpers
def check_number(
    owner: str,
    param: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number within the given bounds."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{owner}: {param} must be {kind}, got {value!r}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{owner}: {param} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {param} must be finite, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{owner}: {param} must be {op} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{owner}: {param} must be {op} {high}, got {value!r}")


def check_choice(owner: str, param: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {param} must be one of {list(choices)}, got {value!r}")

"""The training methods by name: a thin layer over :class:`manytask.registry.Registry`.

Every balancer declares its hyper-parameters once, as ``params: ClassVar[dict[str, Param]]``
(type, range, choices, default, doc). ``@register`` adds the class to :data:`BALANCERS` and
makes its constructor validate against that declaration, so ``CAGrad(c=-1)`` and
``make_balancer("cagrad", c=-1)`` fail the same way, in one line, before anything is built.
Rules between parameters that a declaration cannot express stay in the class (a ``check``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..registry import Param, Registry, resolve
from .base import Balancer


def _load_all() -> None:
    # Importing the package imports every method module, each registering itself.
    import manytask.balancers  # noqa: F401


BALANCERS: Registry[type[Balancer]] = Registry("balancer", loader=_load_all)

B = TypeVar("B", bound=type[Balancer])


def register(cls: B) -> B:
    """Class decorator: add ``cls`` under ``cls.name`` with its declared ``params``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    spec: Mapping[str, Param] = getattr(cls, "params", {})
    BALANCERS.add(cls.name, cls, spec)
    _validate_on_construction(cls, spec)
    return cls


def _validate_on_construction(cls: type[Balancer], spec: Mapping[str, Param]) -> None:
    """Wrap ``cls.__init__`` so the arguments it receives are checked against ``spec``."""
    init = cls.__dict__.get("__init__")
    if init is None:  # inherited: the parent's (already wrapped) constructor checks
        return
    signature = inspect.signature(init)
    where = f"balancer {cls.name!r}"

    @functools.wraps(init)
    def checked(self: Balancer, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        given = {k: v for k, v in bound.arguments.items() if k != "self"}
        validated = resolve(spec, given, where)
        for key in given:
            if key in spec:
                bound.arguments[key] = validated[key]
        init(*bound.args, **bound.kwargs)

    setattr(cls, "__init__", checked)  # noqa: B010 (mypy refuses assigning a method)


def available() -> list[str]:
    """Names of all registered balancers, sorted."""
    return BALANCERS.names()


def get(name: str) -> type[Balancer]:
    """The balancer class called ``name``; an unknown name is a one-line error with a hint."""
    return BALANCERS.get(name)


def parameters(name: str) -> dict[str, Any]:
    """The declared hyper-parameters of balancer ``name`` and their defaults."""
    return {k: p.default for k, p in BALANCERS.entry(name).params.items()}


def build(name: str, params: Mapping[str, Any] | None = None) -> Balancer:
    """Instantiate balancer ``name``; unknown or out-of-range parameters raise ``ValueError``."""
    built: Balancer = BALANCERS.build(name, **dict(params or {}))
    return built


def make_balancer(name: str, tasks: Sequence[str] | None = None, **params: Any) -> Balancer:
    """``make_balancer("cagrad", c=0.4)``: keyword form of :func:`build`. With ``tasks``, the
    method is set up for them at once, so its per-task state and learnable parameters exist
    before an optimizer is built (``make_balancer("uncertainty", tasks=["a", "b"])``)."""
    method = build(name, params)
    if tasks is not None:
        method.setup(tasks)
    return method


# ---------------------------------------------------------------------------- declarations
def number_map(*, low: float | None = None, low_open: bool = False) -> Callable[[Any], str | None]:
    """A ``Param.check`` for ``{task: number}`` mappings (``None`` allowed: no entry)."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            return "must be a mapping of task names to numbers"
        for task, v in value.items():
            if not isinstance(task, str):
                return "must have task names (strings) as keys"
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return f"[{task!r}] must be a finite number"
            if low is not None and (v < low or (low_open and v == low)):
                return f"[{task!r}] must be {'>' if low_open else '>='} {low:g}"
        return None

    return check


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
    """Raise ``ValueError`` unless ``value`` is a finite number within the given bounds.

    For functions that are not registered entries (e.g. the Rep-MTL regulariser)."""
    Param(
        "int" if integer else "float",
        low=low,
        high=high,
        low_open=not low_inclusive,
        high_open=not high_inclusive,
    ).validate(value, f"{owner}: {param}")

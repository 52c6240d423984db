"""Declared, strictly validated merge parameters.

Each merge method declares its parameters as :class:`Param` objects: global ones (one value for
the merge) and per-model ones (one value per input model). Unknown names, wrong types and
out-of-range values are ``ValueError``/``TypeError`` naming the parameter and where it was
given: mergekit silently accepts ``densty`` and ``density: 1.5``; we do not.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter: its kind, default (``REQUIRED`` if none) and admissible range.

    ``kind``: ``"float"``, ``"int"``, ``"bool"`` or ``"choice"`` (then ``choices``).
    ``low``/``high`` bound numbers; ``*_open`` makes the bound exclusive.
    """

    kind: str
    default: Any = _REQUIRED
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` validated (ints are accepted for floats), or raise."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where} must be a number, got {value!r}")
        if self.kind == "int":
            if not isinstance(value, int):
                raise TypeError(f"{where} must be an integer, got {value!r}")
        elif not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            op = ">" if self.low_open else ">="
            raise ValueError(f"{where} must be {op} {self.low}, got {value!r}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            op = "<" if self.high_open else "<="
            raise ValueError(f"{where} must be {op} {self.high}, got {value!r}")
        return float(value) if self.kind == "float" else value


REQUIRED: Any = _REQUIRED


def resolve(
    spec: Mapping[str, Param],
    given: Mapping[str, Any] | None,
    where: str,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate ``given`` against ``spec``; fill defaults (``defaults`` overrides the spec's)."""
    given = dict(given or {})
    if not all(isinstance(k, str) for k in given):
        raise TypeError(f"{where}: parameter names must be strings, got {list(given)}")
    unknown = sorted(set(given) - set(spec))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(spec), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        allowed = ", ".join(sorted(spec)) or "none"
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(hints)}; allowed: {allowed}")
    out: dict[str, Any] = {}
    for name, param in spec.items():
        if name in given:
            out[name] = param.check(given[name], f"{where}: {name}")
        elif defaults is not None and name in defaults:
            out[name] = defaults[name]
        elif param.required:
            raise ValueError(f"{where}: parameter {name!r} is required ({param.doc})")
        else:
            out[name] = param.default
    return out

"""One pattern for everything chosen by name: declared parameters, validation, "did you mean".

Every family of things a user picks with a string (balancers, merge methods, architectures,
data sources, task samplers, metrics, group searches, adapters, ...) is a :class:`Registry`.
An entry declares its parameters once, as :class:`Param` objects (type, range, choices,
default, doc); from that one declaration come

* validation of a configuration's names and values before any data is read
  (:meth:`Registry.validate`), with one-line errors naming the entry, the parameter and the
  value, and a "did you mean" hint on a misspelt name;
* the command line's ``--help`` choices and listings (:meth:`Registry.choices`,
  :meth:`Registry.describe`);
* the docs' method tables (:meth:`Registry.markdown_table`).

This module imports nothing from the rest of the package: every layer may use it.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

_REQUIRED = object()
REQUIRED: Any = _REQUIRED
"""Default of a parameter that has none: the user must give it."""

KINDS = ("float", "int", "bool", "choice", "str", "floats", "ints", "strs", "any")


class RegistryError(ValueError):
    """A name or parameter that a registry does not accept; the message is one line."""


class RegistryTypeError(RegistryError, TypeError):
    """A parameter value of the wrong type (a string for a number, ...): both a
    :class:`RegistryError` and a ``TypeError``, so either may be caught."""


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was: a value from a
    user's file may be huge, and an error message must stay one readable line."""
    text = repr(value)
    if len(text) <= limit and "\n" not in text:
        return text
    text = text.replace("\n", " ")
    return f"{text[: limit - 1]}… ({len(repr(value))} characters)"


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    ``kind``: ``"float"``, ``"int"``, ``"bool"``, ``"str"``, ``"choice"`` (then ``choices``),
    ``"floats"``/``"ints"``/``"strs"`` (a list of those), or ``"any"`` (validated by
    ``check`` alone). ``low``/``high`` bound numbers (each element, for lists); ``*_open``
    makes a bound exclusive. ``nullable`` admits ``None``. ``check`` is a further test that
    returns an error text (or ``None``) for values the declaration cannot express.
    """

    kind: str
    default: Any = _REQUIRED
    doc: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("a 'choice' Param needs choices")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def validate(self, value: Any, where: str) -> Any:
        """Return ``value`` validated (ints are accepted for floats, lists become tuples)."""
        if value is None and self.nullable:
            return None
        if self.kind in ("floats", "ints", "strs"):
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise RegistryTypeError(f"{where} must be a list, got {short(value)}")
            element = {"floats": "float", "ints": "int", "strs": "str"}[self.kind]
            one = Param(element, low=self.low, high=self.high, low_open=self.low_open,
                        high_open=self.high_open)
            out = tuple(one.validate(v, f"{where}[{i}]") for i, v in enumerate(value))
        else:
            out = self._scalar(value, where)
        if self.check is not None:
            problem = self.check(out)
            if problem:
                raise RegistryError(f"{where} {problem}, got {short(value)}")
        return out

    def _scalar(self, value: Any, where: str) -> Any:
        if self.kind == "any":
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise RegistryTypeError(f"{where} must be true or false, got {short(value)}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                hint = did_you_mean(value, [str(c) for c in self.choices])
                raise RegistryError(
                    f"{where} must be one of {list(self.choices)}, got {short(value)}{hint}"
                )
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise RegistryTypeError(f"{where} must be a string, got {short(value)}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if self.kind == "int" else "a number"
            raise RegistryTypeError(f"{where} must be {kind}, got {short(value)}")
        if self.kind == "int" and not (isinstance(value, int) or float(value).is_integer()):
            raise RegistryError(f"{where} must be an integer, got {short(value)}")
        if not math.isfinite(value):
            raise RegistryError(f"{where} must be finite, got {short(value)}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            op = ">" if self.low_open else ">="
            raise RegistryError(f"{where} must be {op} {self.low:g}, got {short(value)}")
        if self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        ):
            op = "<" if self.high_open else "<="
            raise RegistryError(f"{where} must be {op} {self.high:g}, got {short(value)}")
        if self.kind == "int":
            return int(value)
        return float(value)

    def describe(self) -> str:
        """``float in [0, 1), default 0.5``: the declaration in words, for help and tables."""
        kind = self.kind
        if kind == "choice":
            kind = "one of " + "|".join(str(c) for c in self.choices)
        elif self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            kind += (f" in {'(' if self.low_open or self.low is None else '['}{lo}, "
                     f"{hi}{')' if self.high_open or self.high is None else ']'}")
        default = "required" if self.required else f"default {self.default!r}"
        return f"{kind}, {default}"


def resolve(
    spec: Mapping[str, Param],
    given: Mapping[str, Any] | None,
    where: str,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate ``given`` against ``spec`` and fill the defaults (``defaults`` overrides the
    declared ones). Unknown names are refused with a "did you mean" hint."""
    given = dict(given or {})
    if not all(isinstance(k, str) for k in given):
        raise RegistryError(f"{where}: parameter names must be strings, got {short(list(given))}")
    unknown = sorted(set(given) - set(spec))
    if unknown:
        hints = ", ".join(f"{n!r}{did_you_mean(n, list(spec))}" for n in unknown)
        allowed = ", ".join(sorted(spec)) or "none"
        raise RegistryError(f"{where}: unknown parameter(s) {hints}; allowed: {allowed}")
    out: dict[str, Any] = {}
    for name, param in spec.items():
        if name in given:
            out[name] = param.validate(given[name], f"{where}: {name}")
        elif defaults is not None and name in defaults:
            out[name] = defaults[name]
        elif param.required:
            doc = f" ({param.doc})" if param.doc else ""
            raise RegistryError(f"{where}: parameter {name!r} is required{doc}")
        else:
            out[name] = param.default
    return out


T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered thing: its name, what builds it, its declared parameters and a summary."""

    name: str
    target: T
    params: Mapping[str, Param] = field(default_factory=dict)
    summary: str = ""
    reference: str = ""

    def build(self, *args: Any, **params: Any) -> Any:
        """``target(*args, **validated params)`` for a callable target."""
        if not callable(self.target):
            raise TypeError(f"{self.name} is not callable")
        return self.target(*args, **params)


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


class Registry(Generic[T]):
    """Things of one ``kind`` ("balancer", "merge method", ...) chosen by name.

    Register with the decorator (``@BALANCERS.register()`` on a class with a ``params``
    mapping and a ``name``; or ``@REG.register("name", params={...})`` on any callable) or
    with :meth:`add`. Names are unique; aliases resolve to the same entry.
    """

    def __init__(self, kind: str, *, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        # Called once before the first lookup, so entries defined in modules that import this
        # registry (and would make an import cycle if imported here) are all registered.
        self._loader = loader
        self._loaded = loader is None

    # -- registration ----------------------------------------------------------------------
    def add(
        self,
        name: str,
        target: T,
        params: Mapping[str, Param] | None = None,
        *,
        summary: str = "",
        reference: str = "",
        aliases: Sequence[str] = (),
    ) -> Entry[T]:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind}: a registered name must be a non-empty string")
        old = self._entries.get(name)
        if old is not None and old.target is not target:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        entry = Entry(name, target, dict(params or {}), summary or first_line(target),
                      reference)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def remove(self, name: str) -> None:
        """Forget entry ``name`` and its aliases (for tests and plugins that register
        temporarily); an unknown name is an error."""
        self.entry(name)
        key = self._aliases.get(name, name)
        del self._entries[key]
        self._aliases = {a: n for a, n in self._aliases.items() if n != key}

    def register(
        self,
        name: str | None = None,
        *,
        params: Mapping[str, Param] | None = None,
        reference: str = "",
        aliases: Sequence[str] = (),
    ) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`. Without ``name``/``params`` they are read from the
        class attributes ``name`` and ``params`` of the decorated class."""

        def decorate(target: Any) -> Any:
            key = str(name or getattr(target, "name", ""))
            spec = params if params is not None else getattr(target, "params", None)
            self.add(key, target, spec, reference=reference or getattr(target, "reference", ""),
                     aliases=aliases)
            return target

        return decorate

    # -- lookup ------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self.entries())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def entry(self, name: str) -> Entry[T]:
        """The entry called ``name`` (or an alias), or a one-line error with a hint."""
        self._load()
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a string, got {short(name)}")
        key = self._aliases.get(name, name)
        found = self._entries.get(key)
        if found is None:
            hint = did_you_mean(name, list(self._entries) + list(self._aliases))
            raise RegistryError(
                f"unknown {self.kind} {short(name)}{hint}; available: {', '.join(self.names())}"
            )
        return found

    def get(self, name: str) -> T:
        return self.entry(name).target

    def validate(self, name: str, params: Mapping[str, Any] | None = None,
                 where: str = "") -> dict[str, Any]:
        """The validated parameters of ``name`` (defaults filled), or a one-line error.

        Checks names and values only: nothing is built and no data is read, so a whole
        configuration can be validated before any work starts.
        """
        entry = self.entry(name)
        label = f"{where}: " if where else ""
        return resolve(entry.params, params, f"{label}{self.kind} {entry.name!r}")

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        """Validate ``params`` for ``name`` and call its target with them.

        Only the parameters the user gave are passed on (the target's own defaults apply to
        the rest), so an entry's declared defaults and its signature cannot drift apart
        silently: :func:`check_declared` tests that they agree.
        """
        entry = self.entry(name)
        validated = resolve(entry.params, params, f"{self.kind} {entry.name!r}")
        given = {k: validated[k] for k in params}
        return entry.build(*args, **given)

    # -- generated text ---------------------------------------------------------------------
    def choices(self) -> str:
        """``a|b|c``: for ``--help``."""
        return "|".join(self.names())

    def describe(self, name: str) -> str:
        """A few lines: the summary and each parameter with its declaration and doc."""
        entry = self.entry(name)
        lines = [f"{entry.name}: {entry.summary}"]
        for pname, p in entry.params.items():
            doc = f"  {p.doc}" if p.doc else ""
            lines.append(f"    {pname} ({p.describe()}){doc}")
        return "\n".join(lines)

    def markdown_table(self, columns: Sequence[str] = ("name", "summary", "parameters")) -> str:
        """A Markdown table of every entry, for the docs (regenerated, never hand-kept)."""
        header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        rows = []
        for e in self.entries():
            cells = {
                "name": f"`{e.name}`",
                "summary": e.summary.replace("|", "\\|"),
                "parameters": ", ".join(f"`{k}`" for k in e.params) or "none",
                "reference": e.reference,
            }
            rows.append("| " + " | ".join(cells[c] for c in columns) + " |")
        return header + "\n".join(rows) + "\n"


def check_declared(entry: Entry[Any]) -> list[str]:
    """Disagreements between an entry's declared parameters and its target's signature
    (missing names, other defaults). Used by the registries' shared property tests."""
    target = entry.target
    init = target.__init__ if inspect.isclass(target) else target
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        return []
    problems = []
    keywords = {
        p.name: p for p in signature.parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    }
    for pname, param in entry.params.items():
        if pname not in keywords:
            if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
                problems.append(f"{entry.name}: declared {pname!r} is not a keyword of its target")
            continue
        default = keywords[pname].default
        if not param.required and default is not inspect.Parameter.empty:
            same = default == param.default or (
                isinstance(default, list | tuple) and tuple(default) == param.default
            )
            if not same:
                problems.append(
                    f"{entry.name}: {pname} declared default {param.default!r}, "
                    f"signature default {default!r}"
                )
    return problems

"""How a table's files are read and sampled: the options a user of ``pandas.read_csv`` or
Hugging Face ``datasets`` expects, declared once and validated before any file is read.

Read options (CSV/TSV; ``encoding`` and ``na_values`` also apply to ``lines``)::

    header: false                 # no header row: name the columns with columns: [...]
    columns: [label, text]        # the columns' names (with a header row: they replace it)
    delimiter: ","                # one character (default: "," for csv, TAB for tsv)
    quoting: none                 # quote characters are data (default: standard CSV quoting)
    skip_initial_space: true      # drop the spaces after each delimiter (", " separated files)
    na_values: ["?"]              # values that are missing, besides the empty cell
    encoding: latin-1             # of the file (default utf-8)
    pattern: '^(?P<label>\\S+) (?P<text>.*)$'   # format lines: one row per line, a regular
                                  # expression whose named groups are the columns
    nrows: 1000                   # only the first rows of each file (any format)

Numeric transforms (``transforms: {column: log1p}``) apply before the scaling is fitted.
A fixed-seed sample of each split (``sample: {train: 2000, val: 500}``) keeps at most that
many rows, in their file order.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...registry import Param, Registry, resolve, short
from .errors import DataError

READ_PARAMS = {
    "header": Param("bool", True, "the first row names the columns"),
    "columns": Param("strs", None, "the columns' names (required without a header row)",
                     nullable=True),
    "delimiter": Param("str", None, "one character between fields (default: by format)",
                       nullable=True, check=lambda v: None if len(v) == 1 else
                       "must be one character"),
    "quoting": Param("choice", "standard", "standard CSV quoting, or none: quotes are data",
                     choices=("standard", "none")),
    "skip_initial_space": Param("bool", False, "drop the spaces that follow a delimiter"),
    "na_values": Param("strs", (), "values read as missing, besides the empty cell"),
    "encoding": Param("str", "utf-8", "the files' text encoding"),
    "pattern": Param("str", None, "format lines: a regular expression with named groups",
                     nullable=True),
    "nrows": Param("int", None, "keep only the first N rows of each file", low=1,
                   nullable=True),
}
SAMPLE_PARAMS = {
    "train": Param("int", None, "at most this many training rows", low=1, nullable=True),
    "val": Param("int", None, "at most this many validation rows", low=1, nullable=True),
    "test": Param("int", None, "at most this many test rows", low=1, nullable=True),
    "seed": Param("int", 0, "seed of the sample", low=0),
}


def _log1p(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.log1p(np.clip(x, 0, None))
    return out


# Numeric transforms by name, applied to a numeric column before its scaling is fitted.
TRANSFORMS: Registry[Any] = Registry("numeric transform")
TRANSFORMS.add("identity", lambda x: x, summary="the value itself")
TRANSFORMS.add("log1p", _log1p, summary="log(1 + max(x, 0)): money amounts, counts")


@dataclass(frozen=True)
class ReadOptions:
    """How one file is parsed (see the module docstring)."""

    header: bool = True
    columns: tuple[str, ...] | None = None
    delimiter: str | None = None
    quoting: str = "standard"
    skip_initial_space: bool = False
    na_values: tuple[str, ...] = ()
    encoding: str = "utf-8"
    pattern: str | None = None
    nrows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass(frozen=True)
class Sample:
    """At most ``caps[split]`` rows of each split, drawn with ``seed`` (None: all rows)."""

    caps: dict[str, int | None]
    seed: int

    def indices(self, split_index: int, split: str, n: int) -> np.ndarray | None:
        """Sorted row indices to keep (``None``: every row). The draw of split ``k`` uses
        ``default_rng([seed, k])``, so a split's sample does not depend on the others."""
        cap = self.caps.get(split)
        if cap is None or cap >= n:
            return None
        rng = np.random.default_rng([self.seed, split_index])
        return np.sort(rng.choice(n, cap, replace=False))


def read_options(given: Mapping[str, Any], fmt: str, where: str) -> ReadOptions:
    """Validate the read options among ``given`` (a table's keys) for files of ``fmt``."""
    p = resolve(READ_PARAMS, {k: v for k, v in given.items() if k in READ_PARAMS}, where)
    opts = ReadOptions(p["header"], p["columns"], p["delimiter"], p["quoting"],
                       p["skip_initial_space"], tuple(p["na_values"]), p["encoding"],
                       p["pattern"], p["nrows"])
    check_options(opts, fmt, where)
    return opts


def check_options(opts: ReadOptions, fmt: str, where: str) -> None:
    """Options that do not fit the format, or each other."""
    text_like = fmt in ("csv", "tsv", "lines")
    csv_only = {"header": not opts.header, "columns": opts.columns is not None,
                "delimiter": opts.delimiter is not None, "quoting": opts.quoting != "standard",
                "skip_initial_space": opts.skip_initial_space}
    if fmt != "csv" and fmt != "tsv":
        given = [k for k, v in csv_only.items() if v]
        if given and not (fmt == "lines" and given == ["header"]):  # lines: no header row
            raise DataError(f"{where}: {given[0]} applies to csv and tsv files, not {fmt}")
    if not text_like and (opts.na_values or opts.encoding != "utf-8"):
        raise DataError(f"{where}: na_values and encoding apply to csv, tsv and lines files, "
                        f"not {fmt}")
    if fmt == "hf" and opts.nrows is not None:
        raise DataError(f"{where}: nrows applies to files, not a datasets folder")
    if fmt in ("csv", "tsv") and not opts.header and not opts.columns:
        raise DataError(f"{where}: header: false needs columns: [names]")
    if opts.columns is not None and len(set(opts.columns)) != len(opts.columns):
        raise DataError(f"{where}: columns: a name is given twice in {list(opts.columns)}")
    try:
        "".encode(opts.encoding)
    except LookupError:
        raise DataError(f"{where}: encoding {opts.encoding!r} is unknown") from None
    if fmt == "lines":
        if opts.pattern is None:
            raise DataError(f"{where}: format lines needs pattern: a regular expression "
                            "with named groups (?P<name>...)")
        try:
            groups = re.compile(opts.pattern).groupindex
        except re.error as err:
            raise DataError(f"{where}: pattern {short(opts.pattern)} is not a regular "
                            f"expression: {err}") from None
        if not groups:
            raise DataError(f"{where}: pattern has no named group (?P<name>...): the groups "
                            "are the columns")
    elif opts.pattern is not None:
        raise DataError(f"{where}: pattern applies to format lines, not {fmt}")


def split_options(base: ReadOptions, given: Mapping[str, Any], fmt: str,
                  where: str) -> ReadOptions:
    """``base`` with one split file's own read options (e.g. a file without the header row
    the other splits have)."""
    resolve(READ_PARAMS, given, where)  # unknown names, with a "did you mean"
    own = {k: READ_PARAMS[k].validate(v, f"{where}: {k}") for k, v in given.items()}
    opts = dataclasses.replace(base, **own)
    check_options(opts, fmt, where)
    return opts


def sample(value: Any, where: str) -> Sample | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise DataError(f"{where} must be a mapping {{train: N, val: N, test: N, seed: S}}, "
                        f"got {short(value)}")
    p = resolve(SAMPLE_PARAMS, value, where)
    return Sample({s: p[s] for s in ("train", "val", "test")}, p["seed"])


def transforms(value: Any, numeric: tuple[str, ...], where: str) -> dict[str, str]:
    """``{column: transform name}``, every column a numeric feature, every name known."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"{where} must be a mapping {{column: transform}}, got {short(value)}")
    out = {}
    for col, name in value.items():
        if col not in numeric:
            raise DataError(f"{where}: {col!r} is not a numeric column ({list(numeric)})")
        TRANSFORMS.entry(name)  # unknown names: RegistryError with a "did you mean"
        out[str(col)] = str(name)
    return out


__all__ = ["READ_PARAMS", "TRANSFORMS", "ReadOptions", "Sample", "read_options",
           "sample", "split_options", "transforms"]

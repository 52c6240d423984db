"""Column conversions by role, vectorised in Arrow, that find the rows a value cannot serve.

Each conversion returns the values and a boolean mask of unusable rows; the callers either
raise on the first one (training: one line naming file, row and column) or report them all
and leave those rows out (predict and evaluate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .spec import DataError

TRUE = ("1", "1.0", "true", "True", "TRUE", "yes")
FALSE = ("0", "0.0", "false", "False", "FALSE", "no")


@dataclass(frozen=True)
class Problem:
    """An unusable value: the file, its row (1-based, header not counted), column and why."""

    file: str
    row: int
    column: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}, column {self.column!r}: {self.why}"


def first_problem(bad: np.ndarray, values: pa.Array, file: str, rows: np.ndarray,
                  column: str, why: str) -> Problem:
    i = int(np.flatnonzero(bad)[0])
    return Problem(file, int(rows[i]), column, f"{why}, got {_short(values[i].as_py())}")


def problems(bad: np.ndarray, values: pa.Array, file: str, rows: np.ndarray, column: str,
             why: str) -> list[Problem]:
    return [Problem(file, int(rows[i]), column, f"{why}, got {_short(values[i].as_py())}")
            for i in np.flatnonzero(bad)]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def as_column(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def to_float(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (null -> NaN) and the mask of values that are not finite numbers."""
    values = as_column(values)
    if pa.types.is_boolean(values.type):
        values = pc.cast(values, pa.int8())
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        out = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        out = np.where(np.isnan(out), np.nan, out)  # nulls come back as NaN already
        return out, np.isinf(out)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())  # lists, structs: reported as unusable below
    text = pc.utf8_trim_whitespace(values)
    try:
        out = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        return out, np.isinf(out)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # slow path, only when some value is not a number: parse each distinct value once
    parsed: dict[str, float] = {}
    for item in pc.unique(text).to_pylist():
        if item is None:
            continue
        try:
            parsed[item] = float(item)
        except ValueError:
            parsed[item] = math.inf  # marks "not a number"
    keys = pa.array(list(parsed), pa.string())
    index = pc.index_in(text, value_set=keys).to_numpy(zero_copy_only=False)
    table = np.array([*parsed.values(), np.nan])
    index = np.where(np.isnan(index.astype(float)), len(parsed), index).astype(np.int64)
    out = table[index]
    return out, np.isinf(out)


def to_text(values: pa.Array) -> pa.Array:
    """Values as strings (numbers in their shortest form); null stays null."""
    values = as_column(values)
    if pa.types.is_floating(values.type):
        floats = values.to_numpy(zero_copy_only=False)
        whole = np.isnan(floats) | (floats == np.round(floats))
        if whole.all():
            values = pc.cast(values, pa.int64())
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_large_string(values.type):
        return pc.cast(values, pa.string())
    try:
        return pc.cast(values, pa.string())
    except pa.ArrowNotImplementedError:
        raise DataError(f"a column of type {values.type} cannot be read as text") from None


def codes(values: pa.Array, vocabulary: list[str]) -> np.ndarray:
    """Index of each value in ``vocabulary`` (-1: null or not in it)."""
    index = pc.index_in(values, value_set=pa.array(vocabulary, pa.string()))
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def sorted_vocabulary(values: pa.Array) -> list[str]:
    """Distinct non-null values, in numeric order when they are all integers, else sorted."""
    distinct = [v for v in pc.unique(values).to_pylist() if v is not None]
    try:
        return sorted(distinct, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(distinct)


def not_integral(values: pa.Array) -> np.ndarray:
    """Mask of values that read as numbers with a fraction (2.5): not a class label."""
    floats, _ = to_float(values)
    return np.isfinite(floats) & (floats != np.round(floats))


def binary(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels (float32, NaN for missing) and the mask of values that are not 0/1."""
    values = as_column(values)
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        floats, _ = to_float(values)  # numbers: one pass, no text round trip
        known = ~np.isnan(floats)
        wrong = known & (floats != 0) & (floats != 1)
        return np.where(wrong, np.nan, floats).astype(np.float32), wrong
    text = pc.utf8_trim_whitespace(to_text(values))
    ones = pc.fill_null(pc.is_in(text, value_set=pa.array(TRUE)), False)
    zeros = pc.fill_null(pc.is_in(text, value_set=pa.array(FALSE)), False)
    ones_np = ones.to_numpy(zero_copy_only=False)
    zeros_np = zeros.to_numpy(zero_copy_only=False)
    null = pc.is_null(text).to_numpy(zero_copy_only=False)
    out = np.where(ones_np, 1.0, np.where(zeros_np, 0.0, np.nan)).astype(np.float32)
    return out, ~(ones_np | zeros_np | null)


def binary_of(values: pa.Array, positive: Sequence[str],
              negative: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels by value (float32, NaN for missing): 1 for ``positive``, 0 for
    ``negative`` (or, without it, for any other value); the mask of values in neither."""
    text = pc.utf8_trim_whitespace(to_text(as_column(values)))
    null = pc.is_null(text).to_numpy(zero_copy_only=False)
    ones = pc.fill_null(pc.is_in(text, value_set=pa.array(list(positive), pa.string())),
                        False).to_numpy(zero_copy_only=False)
    if negative is None:
        zeros = ~ones & ~null
    else:
        zeros = pc.fill_null(pc.is_in(text, value_set=pa.array(list(negative), pa.string())),
                             False).to_numpy(zero_copy_only=False)
    out = np.where(ones, 1.0, np.where(zeros, 0.0, np.nan)).astype(np.float32)
    return out, ~(ones | zeros | null)

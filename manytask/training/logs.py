"""Run logs as CSV or JSON lines, cut back on resume so no row is written twice.

A resume rewrites a log by writing the kept rows to a new file beside it and renaming that
over the old one, so a kill at any moment leaves either the old log or the new, never an
emptied or headless one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from ..files import atomic_write_text

LogFormat = Literal["csv", "jsonl"]
LOG_FORMATS: tuple[LogFormat, ...] = ("csv", "jsonl")


class RunLog:
    """Append-only table of rows with fixed ``columns``, in ``<name>.csv`` or ``<name>.jsonl``.

    Values that are missing for a row (an absent task) are written empty (CSV) or ``null``.
    """

    def __init__(self, path_stem: Path, columns: Sequence[str], fmt: LogFormat = "csv") -> None:
        if fmt not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {list(LOG_FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        self.columns = list(columns)
        self.path = path_stem.with_suffix(f".{fmt}")
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                if fmt == "csv":
                    csv.writer(f).writerow(self.columns)

    def write(self, row: Mapping[str, object]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.path.name}: unknown column(s) {sorted(unknown)}")
        with open(self.path, "a", newline="") as f:
            if self.fmt == "csv":
                csv.writer(f).writerow([_csv_value(row.get(c)) for c in self.columns])
            else:
                f.write(json.dumps({c: _json_value(row.get(c)) for c in self.columns}) + "\n")

    def read(self) -> list[dict[str, object]]:
        """All rows; numbers come back as floats from CSV, as written from JSON lines."""
        with open(self.path, newline="") as f:
            if self.fmt == "csv":
                return [
                    {
                        k: (float(v) if v not in ("", None) and _is_number(v) else v or None)
                        for k, v in r.items()
                    }
                    for r in csv.DictReader(f)
                ]
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, column: str, last: float) -> None:
        """Drop rows whose ``column`` exceeds ``last`` (rows written after a checkpoint).

        Kept rows are copied byte for byte, so a resumed run's log equals an uninterrupted one.
        """
        with open(self.path, newline="") as f:
            lines = f.readlines()
        header, body = (lines[:1], lines[1:]) if self.fmt == "csv" else ([], lines)
        index = self.columns.index(column)
        kept = []
        for line in body:
            if not line.endswith("\n") or not line.strip():  # a row cut short by a crash
                continue
            if self.fmt == "csv":
                value = next(csv.reader([line]))[index]
            else:
                value = json.loads(line).get(column)
            if value in ("", None) or float(value) <= last:
                kept.append(line)
        if len(kept) == len(body) and all(ln.endswith("\n") for ln in lines):
            return  # nothing to drop: leave the file as it is
        replace_lines(self.path, header + kept)


def replace_lines(path: Path, lines: Sequence[str]) -> None:
    """Replace ``path`` by a file of ``lines``: written beside it, flushed, renamed over it."""
    atomic_write_text(path, "".join(lines), prefix=".tmp-")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _json_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

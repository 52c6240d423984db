"""Read a table's files into Arrow tables, one per split, with the rows' original numbers.

CSV, TSV, JSON lines and Parquet are read by pyarrow (the reader under Hugging Face
``datasets``; reading directly avoids its on-disk cache copy of a large file); a folder written
by ``datasets.Dataset(Dict).save_to_disk`` is opened with ``datasets.load_from_disk``. Every
declared column is checked to exist before anything else; an empty cell is a null.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...files import MAX_DEPTH, UnsafeFileError, folder_files, json_depth
from .spec import SPLITS, DataError, TableSpec


@dataclass
class SplitRows:
    """The rows of one split: the columns, the file they came from and their row numbers
    there (1-based, the header not counted)."""

    table: pa.Table
    file: str
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.table.num_rows)


def read_file(path: Path, fmt: str, columns: tuple[str, ...], where: str,
              required: tuple[str, ...] | None = None) -> pa.Table:
    """The ``columns`` of one file (``required``: those that must exist, default all)."""
    if not path.exists():
        raise DataError(f"{where}: {str(path)!r} does not exist")
    if fmt != "hf" and not path.is_file():
        raise DataError(f"{where}: {str(path)!r} is not a regular file")
    try:
        table = _read(path, fmt, columns)
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot be read as {fmt}: {text}") from None
    want = required if required is not None else columns
    missing = [c for c in want if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: column {missing[0]!r} does not exist (columns: "
                        f"{', '.join(table.column_names[:20])})")
    return single_values(table.select([c for c in columns if c in table.column_names]),
                         str(path))


def check_json_lines(path: Path, limit: int = MAX_DEPTH, block: int = 1 << 24) -> None:
    """Refuse a JSON lines file with a row nested deeper than ``limit``: pyarrow's parser
    recurses once per level and ends the process (a segmentation fault) on a row nested a few
    ten thousand deep. Read in blocks; a row's opening brackets bound its depth from above,
    so only a row with more than ``limit`` of them is measured exactly."""
    carry, row = b"", 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            data = carry + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            body, carry = data[:cut], data[cut:]
            for i, line in _bracket_heavy_lines(body, limit):
                if json_depth(line.decode("utf-8", errors="replace")) > limit:
                    raise DataError(f"{path}: row {row + i + 1}: JSON nested deeper than "
                                    f"{limit} levels; refused")
            row += body.count(b"\n")
            if not chunk:
                return


def _bracket_heavy_lines(body: bytes, limit: int) -> list[tuple[int, bytes]]:
    """The lines of ``body`` (index, text) holding more than ``limit`` opening brackets."""
    if not body:
        return []
    arr = np.frombuffer(body, dtype=np.uint8)
    opens = np.concatenate([[0], np.cumsum((arr == ord("[")) | (arr == ord("{")))])
    starts = np.concatenate([[0], np.flatnonzero(arr == ord("\n")) + 1])
    ends = np.concatenate([starts[1:], [len(arr)]])
    heavy = np.flatnonzero(opens[ends] - opens[starts] > limit)
    return [(int(i), body[starts[i]:ends[i]]) for i in heavy]


def single_values(table: pa.Table, where: str) -> pa.Table:
    """``table`` if every column holds single values (numbers, text, booleans); a column of
    lists or objects (JSON lines, Parquet, datasets allow them) is refused by name, before
    a conversion deep in Arrow fails on it."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_nested(kind) or (pa.types.is_dictionary(kind) and pa.types.is_nested(
                kind.value_type)):
            raise DataError(f"{where}: column {name!r} holds {str(kind)[:60]} values (lists or "
                            "objects), not one number or text per row")
    return table


def _read(path: Path, fmt: str, columns: tuple[str, ...]) -> pa.Table:
    if fmt in ("csv", "tsv"):
        from pyarrow import csv

        delimiter = "\t" if fmt == "tsv" else ","
        header = csv.open_csv(path, parse_options=csv.ParseOptions(delimiter=delimiter))
        names = header.schema.names
        present = [c for c in columns if c in names]
        # every declared column as text: converted by role afterwards, so that a bad value
        # is reported with its row rather than as an inference failure deep in a block
        convert = csv.ConvertOptions(
            include_columns=present, column_types=dict.fromkeys(present, pa.string()),
            strings_can_be_null=True, quoted_strings_can_be_null=True)
        return csv.read_csv(path, parse_options=csv.ParseOptions(delimiter=delimiter),
                            convert_options=convert)
    if fmt == "jsonl":
        from pyarrow import json

        check_json_lines(path)  # before pyarrow, whose parser crashes on deep nesting
        return json.read_json(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in columns if c in names])
    raise DataError(f"{path}: format {fmt!r} is read by read_hf")


def read_hf(path: Path, split_names: tuple[str, ...], columns: tuple[str, ...],
            where: str, need_splits: bool,
            allow_outside: bool = False) -> dict[str, pa.Table] | pa.Table:
    """A ``save_to_disk`` folder: its splits (a DatasetDict) or its one table (a Dataset).
    Its files are checked first (``datasets`` opens them itself): a link out of the folder
    (unless ``allow_outside``) or a pipe is refused by name."""
    if not path.is_dir():
        raise DataError(f"{where}: {str(path)!r} is not a Hugging Face datasets folder")
    import datasets

    try:
        folder_files(path, what=f"{where}: datasets file", allow_outside=allow_outside)
    except UnsafeFileError as err:
        raise DataError(str(err)) from None

    try:
        loaded: Any = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"{path}: not a datasets folder written by save_to_disk: "
                        f"{str(err).splitlines()[0]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        out = {}
        for split, name in zip(SPLITS, split_names, strict=True):
            key = name if name in loaded else ("validation" if name == "val" else name)
            if key not in loaded:
                raise DataError(f"{path}: split {name!r} is missing (splits: "
                                f"{', '.join(loaded)})")
            out[split] = _hf_columns(loaded[key].data.table, columns, f"{path}/{key}")
        return out
    if need_splits:
        raise DataError(f"{path}: a single Dataset, not a DatasetDict: give split: "
                        "{column: ...} or {ratio: [...]}")
    return _hf_columns(loaded.data.table, columns, str(path))


def _hf_columns(table: pa.Table, columns: tuple[str, ...], where: str) -> pa.Table:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: column {missing[0]!r} does not exist (columns: "
                        f"{', '.join(table.column_names[:20])})")
    return single_values(table.select(list(columns)), where)


def read_splits(spec: TableSpec) -> dict[str, SplitRows]:
    """The train/val/test rows of ``spec``; an empty split is an error."""
    columns = spec.columns()
    out: dict[str, SplitRows] = {}
    if spec.files is not None:
        for split, path in spec.files.items():
            if spec.format == "hf":
                table = read_hf(path, spec.split_names, columns, spec.where, False,
                                spec.allow_outside)
                assert isinstance(table, pa.Table)
            else:
                table = read_file(path, spec.format, columns, spec.where)
            out[split] = SplitRows(table, str(path), np.arange(1, table.num_rows + 1))
    else:
        assert spec.file is not None
        path = spec.file
        if spec.format == "hf":
            loaded = read_hf(path, spec.split_names, columns, spec.where,
                             spec.ratio is None and spec.split_column is None,
                             spec.allow_outside)
        else:
            loaded = read_file(path, spec.format, columns, spec.where)
        if isinstance(loaded, dict):
            out = {s: SplitRows(t, f"{path}/{s}", np.arange(1, t.num_rows + 1))
                   for s, t in loaded.items()}
        else:
            out = _split_one(loaded, spec, str(path))
    for split, part in out.items():
        if len(part) == 0:
            raise DataError(f"{part.file}: split {split!r} is empty (0 rows)")
    return out


def _split_one(table: pa.Table, spec: TableSpec, file: str) -> dict[str, SplitRows]:
    n = table.num_rows
    rows = np.arange(1, n + 1)
    if spec.split_column is not None:
        values = pc.cast(table[spec.split_column], pa.string())
        known = pc.is_in(values, value_set=pa.array(list(spec.split_names)))
        known = pc.fill_null(known, False).to_numpy(zero_copy_only=False)
        if not known.all():
            bad = int(np.flatnonzero(~known)[0])
            raise DataError(f"{file}: row {bad + 1}, column {spec.split_column!r}: split "
                            f"{values[bad].as_py()!r} is not one of {list(spec.split_names)}")
        text = values.to_numpy(zero_copy_only=False)
        index = {s: np.flatnonzero(text == name)
                 for s, name in zip(SPLITS, spec.split_names, strict=True)}
    else:
        assert spec.ratio is not None
        perm = np.random.default_rng(spec.seed).permutation(n)
        n_train, n_val = int(spec.ratio[0] * n), int(spec.ratio[1] * n)
        parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
        index = {s: np.sort(p) for s, p in zip(SPLITS, parts, strict=True)}
    return {s: SplitRows(table.take(pa.array(i)), file, rows[i]) for s, i in index.items()}

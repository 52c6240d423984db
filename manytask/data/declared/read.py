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
import torch

from ...files import MAX_DEPTH, UnsafeFileError, folder_files, json_depth
from .options import ReadOptions
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
              required: tuple[str, ...] | None = None,
              options: ReadOptions | None = None) -> pa.Table:
    """The ``columns`` of one file (``required``: those that must exist, default all),
    parsed as ``options`` say."""
    options = options or ReadOptions()
    if not path.exists():
        raise DataError(f"{where}: {str(path)!r} does not exist")
    if fmt != "hf" and not path.is_file():
        raise DataError(f"{where}: {str(path)!r} is not a regular file")
    try:
        table = _read(path, fmt, columns, options)
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
    table = single_values(table.select([c for c in columns if c in table.column_names]),
                          str(path))
    if options.nrows is not None:
        table = table.slice(0, options.nrows)
    return _clean(table, options) if fmt in ("csv", "tsv", "lines") else table


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


def _clean(table: pa.Table, options: ReadOptions) -> pa.Table:
    """Text cells: spaces after the delimiter dropped (``skip_initial_space``), then the
    empty cell and every ``na_values`` entry made null."""
    missing = pa.array(["", *options.na_values], pa.string())
    out = {}
    for name in table.column_names:
        col = table[name]
        if not pa.types.is_string(col.type):
            out[name] = col
            continue
        if options.skip_initial_space:
            col = pc.utf8_ltrim(col, characters=" ")
        out[name] = pc.if_else(pc.is_in(col, value_set=missing), None, col)
    return pa.table(out)


def _read(path: Path, fmt: str, columns: tuple[str, ...], options: ReadOptions) -> pa.Table:
    if fmt in ("csv", "tsv"):
        from pyarrow import csv

        delimiter = options.delimiter or ("\t" if fmt == "tsv" else ",")
        quoting = options.quoting == "standard"
        parse = csv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                 double_quote=quoting)
        if options.columns is not None:  # names given: a header row, if any, is skipped
            read = csv.ReadOptions(column_names=list(options.columns),
                                   skip_rows=1 if options.header else 0,
                                   encoding=options.encoding)
            names = list(options.columns)
        else:
            read = csv.ReadOptions(encoding=options.encoding)
            names = csv.open_csv(path, read_options=read, parse_options=parse).schema.names
        present = [c for c in columns if c in names]
        # every declared column as text: converted by role afterwards, so that a bad value
        # is reported with its row rather than as an inference failure deep in a block;
        # only the empty cell is null here (na_values: see _clean), never a text "NA"
        convert = csv.ConvertOptions(
            include_columns=present, column_types=dict.fromkeys(present, pa.string()),
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True)
        return csv.read_csv(path, read_options=read, parse_options=parse,
                            convert_options=convert)
    if fmt == "lines":
        return _read_lines(path, options)
    if fmt == "jsonl":
        from pyarrow import json

        check_json_lines(path)  # before pyarrow, whose parser crashes on deep nesting
        return json.read_json(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in columns if c in names])
    raise DataError(f"{path}: format {fmt!r} is read by read_hf")


def _read_lines(path: Path, options: ReadOptions) -> pa.Table:
    """One row per non-blank line; the columns are the named groups of ``pattern``."""
    assert options.pattern is not None
    with pa.input_stream(str(path), compression="detect") as stream:
        text = stream.read().decode(options.encoding)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return pa.table({name: pa.array([], pa.string())
                         for name in _groups(options.pattern)})
    matched = pc.extract_regex(pa.array(lines, pa.string()), pattern=options.pattern)
    unmatched = pc.is_null(matched).to_numpy(zero_copy_only=False)
    if unmatched.any():
        i = int(np.flatnonzero(unmatched)[0])
        raise DataError(f"{path}: row {i + 1} does not match pattern "
                        f"{options.pattern!r}: {lines[i][:40]!r}")
    return pa.Table.from_struct_array(matched)


def _groups(pattern: str) -> list[str]:
    import re

    return list(re.compile(pattern).groupindex)


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
                table = read_file(path, spec.format, columns, spec.where,
                                  options=spec.read_options(split))
            out[split] = SplitRows(table, str(path), np.arange(1, table.num_rows + 1))
        if spec.holdout is not None:
            out["train"], out["val"] = holdout(out["train"], spec.holdout, spec.seed)
            out = {s: out[s] for s in SPLITS}
    else:
        assert spec.file is not None
        path = spec.file
        if spec.format == "hf":
            loaded = read_hf(path, spec.split_names, columns, spec.where,
                             spec.ratio is None and spec.split_column is None,
                             spec.allow_outside)
        else:
            loaded = read_file(path, spec.format, columns, spec.where,
                               options=spec.read_options())
        if isinstance(loaded, dict):
            out = {s: SplitRows(t, f"{path}/{s}", np.arange(1, t.num_rows + 1))
                   for s, t in loaded.items()}
        else:
            out = _split_one(loaded, spec, str(path))
    for split, part in out.items():
        if len(part) == 0:
            raise DataError(f"{part.file}: split {split!r} is empty (0 rows)")
    if spec.sample is not None:
        for k, split in enumerate(SPLITS):
            keep = spec.sample.indices(k, split, len(out[split]))
            if keep is not None:
                out[split] = take(out[split], keep)
    return out


def take(part: SplitRows, index: np.ndarray) -> SplitRows:
    """The rows ``index`` of ``part``, keeping their original row numbers."""
    return SplitRows(part.table.take(pa.array(index)), part.file, part.rows[index])


def holdout(train: SplitRows, share: float, seed: int) -> tuple[SplitRows, SplitRows]:
    """``share`` of the training rows (at least one) as validation, drawn with
    ``numpy.random.default_rng(seed).permutation``; both keep their file order."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, round(share * len(train)))
    return take(train, np.sort(order[n_val:])), take(train, np.sort(order[:n_val]))


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
        # torch's generator: the split Census-Income has always used (seed 0, 60/20/20)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed)).numpy()
        n_train, n_val = int(spec.ratio[0] * n), int(spec.ratio[1] * n)
        parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
        index = {s: np.sort(p) for s, p in zip(SPLITS, parts, strict=True)}
    return {s: SplitRows(table.take(pa.array(i)), file, rows[i]) for s, i in index.items()}

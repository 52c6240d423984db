"""A trained ``data: files`` run and a bench run for the hostile cases of run folders, and
the edits those cases make to them (a file moved out and linked back, a pipe in its place).

The runs are trained once per session (:func:`trained_files_run`, :func:`tiny_bench`, used by
the fixtures of ``conftest.py``); each case works on a copy (:func:`copy_run`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from manytask.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data" / "declared"))
from declared_tables import make_table, table_section, write


def trained_files_run(root: Path) -> Path:
    """``root/data`` (the table as CSV, JSON lines and Parquet, and ``train.yaml``) and
    ``root/run``, one epoch trained on it through the command line."""
    data = root / "data"
    data.mkdir(parents=True)
    table = make_table(120)
    for ext in ("csv", "jsonl", "parquet"):
        write(table, data / f"shop.{ext}")
    cfg = {"data": "files", "dataset": table_section("shop.csv"), "data_root": str(data),
           "hidden": [8], "epochs": 1, "batch_size": 32, "progress": False,
           "cache_dir": str(root / "cache")}
    (data / "train.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["train", "--config", str(data / "train.yaml"), "--run-dir", str(root / "run")])
    assert code == 0
    return root


def tiny_bench(root: Path) -> Path:
    """A finished one-cell bench run folder."""
    code = main(["bench", "--run-dir", str(root / "bench"), "--methods", "equal", "--seeds",
                 "0", "--data", "multidigits", "--train-size", "64", "--epochs", "1",
                 "--batch-size", "32", "--hidden", "8", "--no-single-task"])
    assert code == 0
    return root / "bench"


def copy_run(source: Path, tmp: Path) -> tuple[Path, Path]:
    """A copy of the trained run and its data under ``tmp``: ``(tmp/run, tmp/data)``, the
    copy's ``train.yaml`` pointing at the copied data."""
    shutil.copytree(source / "run", tmp / "run", symlinks=True)
    shutil.copytree(source / "data", tmp / "data", symlinks=True)
    cfg = yaml.safe_load((tmp / "data" / "train.yaml").read_text())
    cfg.update(data_root=str(tmp / "data"), cache_dir=str(tmp / "cache"))
    (tmp / "data" / "train.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "run", tmp / "data"


def edit_yaml(path: Path, **changes: Any) -> Path:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def checkpoint(run: Path) -> Path:
    """The folder ``checkpoints/latest`` names."""
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def link_out(path: Path, outside: Path) -> Path:
    """Move ``path`` to ``outside`` and put a link to it in its place; return the link."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / path.name
    shutil.move(str(path), target)
    path.symlink_to(target)
    return path


def fifo(path: Path) -> Path:
    """A named pipe in place of ``path``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


BOMB = "bomb0: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"bomb{i + 1}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for i, (p, c) in enumerate(zip("abcdefgh", "bcdefghi", strict=True)))
"""Nine levels of nine aliases: 9**9 values once expanded, a few hundred bytes on disk."""

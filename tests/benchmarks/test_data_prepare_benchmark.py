"""The data-preparation benchmark's table and tasks, on a small table, in process."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_prepare.py"


def test_small_table_prepares_and_trains(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("data_prepare", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["data_prepare"] = bench
    try:
        spec.loader.exec_module(bench)
        table = bench.make_table(600)
        assert table.num_columns == 50
        pq.write_table(table, tmp_path / "t.parquet")
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            result = bench.prepare_once("t.parquet", 64)
            speed = bench.throughput("t.parquet", 64, 4)
        finally:
            os.chdir(cwd)
    finally:
        del sys.modules["data_prepare"]
    assert result["seconds"] > 0 and result["peak_mib"] > 0
    assert speed["pure_ms"] > 0 and speed["trainer_ms"] > 0

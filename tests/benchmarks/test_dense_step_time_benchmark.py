"""The dense step-time benchmark runs end to end on a tiny setting and prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dense_step_time.py"


def test_smoke_run_prints_one_row_per_architecture(capsys) -> None:
    spec = importlib.util.spec_from_file_location("dense_step_time", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        assert module.main(["--size", "16", "--steps", "1", "--rounds", "1",
                            "--archs", "mtan", "taps"]) == 0
    finally:
        sys.modules.pop("dense_scenes", None)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    table = rows[rows.index(next(r for r in rows if "architecture" in r)) + 1:]
    assert [r.split("|")[1].strip() for r in table] == ["mtan", "taps"]
    for row in table:
        assert float(row.split("|")[2]) > 0.0

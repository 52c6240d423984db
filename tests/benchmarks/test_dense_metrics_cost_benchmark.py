"""The metric-cost benchmark runs end to end on a tiny setting and prints its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dense_metrics_cost.py"


def test_smoke_run_prints_one_row_per_size(capsys) -> None:
    spec = importlib.util.spec_from_file_location("dense_metrics_cost", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--sizes", "16", "24", "--scenes", "4", "--batch", "2",
                        "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["16", "24"]
    for row in rows[1:]:
        share = float(row.split("|")[2].strip().rstrip(" %"))
        assert 0.0 < share < 100.0

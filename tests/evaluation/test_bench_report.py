"""`manytask bench` resumes without re-running finished cells; `report` makes real files."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from manytask.config import config_from_mapping
from manytask.evaluation.bench import RESULT, cell_dir, grid, run_grid
from manytask.evaluation.report import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_grid_resumes_and_report_is_self_contained(tmp_path: Path) -> None:
    base = config_from_mapping(
        {"epochs": 1, "train_size": 256, "hidden": [16], "log_every": 1, "cosine_every": 1}
    )
    cells = grid(["equal", "mgda"], ["hard_sharing"], [0], ["left", "right"])
    assert [c.key for c in cells] == [
        "single-left__hard_sharing__seed0",
        "single-right__hard_sharing__seed0",
        "equal__hard_sharing__seed0",
        "mgda__hard_sharing__seed0",
    ]
    messages: list[str] = []
    results = run_grid(base, cells, tmp_path, echo=messages.append)
    assert len(results) == 4
    stamps = {c.key: (cell_dir(tmp_path, base, c) / RESULT).stat().st_mtime_ns for c in cells}

    (cell_dir(tmp_path, base, cells[3]) / RESULT).unlink()  # as if that cell had been killed
    messages.clear()
    run_grid(base, cells, tmp_path, echo=messages.append)
    assert messages[0] == "bench: 4 cells, 3 already done, 1 to run"
    for cell in cells[:3]:
        assert (cell_dir(tmp_path, base, cell) / RESULT).stat().st_mtime_ns == stamps[cell.key]

    made = report([tmp_path])
    for name in ("curves", "weights", "cosine", "pareto", "delta_m"):
        assert made[name].read_bytes()[:8] == PNG_MAGIC, name
    page = made["html"].read_text()
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", page)  # nothing external
    summary = made["summary"].read_text()
    assert "| mgda | hard_sharing | 1 |" in summary and "Δm" in summary
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} >= {"mgda"} and all(r["value"] for r in rows)


def test_report_refuses_a_directory_that_is_not_a_bench_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a bench run"):
        report([tmp_path])

"""The step-cost benchmark runs end to end on a tiny setting and writes its table."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_cost.py"


@pytest.fixture(scope="module")
def step_cost():
    spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["step_cost"]


def test_smoke_run_writes_one_row_per_method_and_mode(step_cost, tmp_path, capsys) -> None:
    out = tmp_path / "table.md"
    code = step_cost.main(["--tasks", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
                           "--methods", "equal", "mgda", "--out", os.fspath(out)])
    assert code == 0
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header] == [
        "method", "mode", "K", "ms/step", "ratio vs equal", "torchjd ratio"]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in body] == [
        ("equal", "—", "2"), ("mgda", "exact", "2"), ("mgda", "feature", "2")]
    for r in body:
        assert float(r[3]) > 0 and float(r[4]) > 0  # timed, no error
    # torchjd (a test dependency) gives MGDA and Mean; feature rows have no peer
    assert float(body[0][5]) > 0 and float(body[1][5]) > 0 and body[2][5].strip() == "—"


def test_a_method_with_a_required_parameter_is_skipped(step_cost, monkeypatch) -> None:
    from manytask.balancers import registry

    class NeedsArgument(registry.get("equal")):  # type: ignore[misc]
        name = "needs_argument_for_test"

        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

    registry.BALANCERS.add(NeedsArgument.name, NeedsArgument)
    try:
        balancer, why = step_cost.build_balancer(NeedsArgument.name)
    finally:
        registry.BALANCERS.remove(NeedsArgument.name)
    assert balancer is None and "scale" in why

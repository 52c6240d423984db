"""The engine's benchmarks run end to end on a tiny setting: the interleaved feature-level
and exact-mode A/Bs and the step-cost table with two-layer heads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def modules():
    yield _load("step_cost"), _load("feature_ab")
    for name in ("step_cost", "feature_ab", "exact_ab"):
        sys.modules.pop(name, None)


def test_feature_ab_writes_both_head_kinds(modules, tmp_path) -> None:
    _, feature_ab = modules
    out = tmp_path / "ab.md"
    assert feature_ab.main(["--tasks", "2", "--rounds", "1", "--threads", "1",
                            "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()
            if line.startswith("| ") and "variant" not in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (h, v) for h in ("linear", "mlp") for v in ("equal", "mgda", "mgda-per-task")]


def test_step_cost_with_two_layer_heads(modules, tmp_path) -> None:
    step_cost, _ = modules
    out = tmp_path / "t.md"
    assert step_cost.main(["--heads", "mlp", "--tasks", "2", "--steps", "1", "--warmup", "0",
                           "--threads", "1", "--methods", "equal", "--no-torchjd",
                           "--out", str(out)]) == 0
    assert "two-layer head" in out.read_text()


def test_exact_ab_times_ours_both_products_and_torchjd(modules, tmp_path) -> None:
    exact_ab = _load("exact_ab")
    out = tmp_path / "exact.md"
    assert exact_ab.main(["--tasks", "2", "--rounds", "1", "--threads", "1",
                          "--methods", "mgda", "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()
            if line.startswith("| ") and "variant" not in line]
    variants = [(r[0].strip(), r[1].strip()) for r in rows]
    assert variants[:3] == [("equal", "ours"), ("mgda", "ours"), ("mgda", "ours-float64")]
    assert variants[3:] in ([], [("mgda", "torchjd")])  # torchjd is a test-only peer
    from manytask.engine import gramian
    assert gramian.certified.__name__ == "certified"  # the patch was undone

"""Class 4, for ``predict``, ``evaluate`` and ``report`` (issue 16).

Weights that overflow (finite on disk, inf logits, NaN probabilities), a checkpoint tensor
whose dtype was altered in its header (the bits would load as garbage), NaN weights, and a
bench cell result holding a non-finite number: each is refused in one line naming it, and
no prediction, metric or report is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hos_helpers import assert_cli_one_line, run_cli
from hos_runs import checkpoint
from safetensors.torch import load_file, save_file


def _edit_weights(run: Path, edit: str) -> str:
    """Alter the checkpoint's weights; return the name the refusal must give."""
    path = checkpoint(run) / "model.safetensors"
    if edit.startswith("dtype"):  # the header says another type of the same width
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        new = {"dtype-int": b'"I32"', "dtype-uint": b'"U32"'}[edit]
        path.write_bytes(raw[:8] + raw[8:8 + n].replace(b'"F32"', new) + raw[8 + n:])
        return "expected float32"
    state = load_file(str(path))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    if edit == "overflow":
        state = {k: v * 1e30 if v.is_floating_point() else v for k, v in state.items()}
        name = "not finite"
    else:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = {"nan": float("nan"), "inf": float("inf")}[edit]
    save_file(state, str(path))
    return name


@pytest.mark.parametrize("edit", ["overflow", "dtype-int", "dtype-uint", "nan", "inf"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_weights_that_overflow_or_were_altered_give_no_output(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, edit: str,
) -> None:
    run, data = files_run
    needle = _edit_weights(run, edit)
    out = tmp_path / ("p.csv" if command == "predict" else "m.json")
    code, err = run_cli([command, "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(out)], capsys)
    assert_cli_one_line(code, err, needle)
    assert not out.exists()


def test_finite_weights_give_finite_predictions(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import pyarrow.csv as pacsv

    run, data = files_run
    code, err = run_cli(["predict", "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    table = pacsv.read_csv(tmp_path / "p.csv")
    for name in table.column_names:
        if name.endswith(":p") or ":p(" in name:
            assert torch.isfinite(torch.tensor(table[name].to_pylist())).all(), name


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ["a test metric", "wall_seconds"])
def test_a_cell_result_holding_a_non_finite_number_is_refused_by_report(
    bench_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str,
    where: str,
) -> None:
    import shutil

    bench = tmp_path / "bench"
    shutil.copytree(bench_source, bench)
    result = next(bench.glob("cells/*/result.json"))
    data = json.loads(result.read_text())
    if where == "wall_seconds":
        data["wall_seconds"] = float(value.replace("Infinity", "inf"))
        key = "wall_seconds"
    else:
        task = next(iter(data["test"]))
        metric = next(iter(data["test"][task]))
        data["test"][task][metric] = float(value.replace("Infinity", "inf"))
        key = f"test/{task}/{metric}"
    result.write_text(json.dumps(data))
    out = tmp_path / "report"
    code, err = run_cli(["report", str(bench), "--out", str(out)], capsys)
    assert_cli_one_line(code, err, "result.json", key)
    assert not out.exists()

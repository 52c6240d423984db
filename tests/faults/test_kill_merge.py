"""SIGKILL ``manytask merge`` while it writes: the output folder holds nothing, or the previous
complete result, never a part; and a re-run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from manytask.merging import merge

HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


def _config(root: Path, density: float) -> Path:
    path = root / f"merge-{density}.yaml"
    models = [{"model": str(root / m), "parameters": {"density": density}} for m in ("m1", "m2")]
    spec = {"merge_method": "ties", "base_model": str(root / "base"), "models": models}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    for name in ("base", "m1", "m2"):
        (tmp_path / name).mkdir()
        tensors = {
            "a.weight": torch.randn(64, 32, generator=g),
            "b.weight": torch.randn(32, generator=g),
        }
        save_file(tensors, tmp_path / name / "model.safetensors")
    return _config(tmp_path, 0.5), _config(tmp_path, 0.8)


def _run(
    config: Path, out: Path, stall: Path | None = None, flag: str = "--stall"
) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    extra = [] if stall is None else [flag, str(stall)]
    return subprocess.Popen(
        [sys.executable, str(HERE / "_merge.py"), str(config), str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_while_writing(config: Path, out: Path, marker: Path, flag: str = "--stall") -> None:
    proc = _run(config, out, stall=marker, flag=flag)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the merge never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _rerun(config: Path, out: Path, tmp_path: Path) -> None:
    merge(config, out)  # in this process: a fresh start of the same code, without its cost
    clean = tmp_path / "clean"
    merge(config, clean)
    assert _files(out) == _files(clean)


def test_killed_first_merge_leaves_nothing(configs: tuple[Path, Path], tmp_path: Path) -> None:
    first, _ = configs
    out = tmp_path / "out"
    _kill_while_writing(first, out, tmp_path / "stalled")
    assert not out.exists()
    # the killed write did happen, in a temporary sibling
    assert any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())
    _rerun(first, out, tmp_path)


def test_killed_merge_keeps_the_previous_result(
    configs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = configs
    out = tmp_path / "out"
    merge(first, out)
    before = _files(out)
    _kill_while_writing(second, out, tmp_path / "stalled")
    assert _files(out) == before
    _rerun(second, out, tmp_path)
    assert _files(out) != before  # the second configuration did replace the first


def test_killed_while_replacing_leaves_a_complete_result(
    configs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = configs
    out = tmp_path / "out"
    merge(first, out)
    before = _files(out)
    _kill_while_writing(second, out, tmp_path / "stalled", flag="--stall-replacing")
    # killed between the exchange and the removal: the new result is complete in place, the
    # old one waits beside it under the temporary name
    clean = tmp_path / "clean"
    merge(second, clean)
    assert _files(out) == _files(clean) != before
    assert any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())
    report = merge(second, out)  # the next run removes the leftover and says so
    assert any("removed .out.partial-" in n for n in report.notes)
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())

"""The README's Python examples run as written, and its two commands match the Makefile/CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write run directories
    code = compile(BLOCKS[index], f"README.md python block {index}", "exec")
    exec(code, {"__name__": f"readme_{index}"})


def test_two_commands_and_ci_agree() -> None:
    assert "make train" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_no_placeholder_left() -> None:
    for marker in ("TODO", "TBD", "XXX"):
        assert marker not in README, marker
    # a line that is one upper-case word (e.g. BENCHMARKS) is a section still to be written
    lone = re.findall(r"^[A-Z][A-Z_]{3,}$", README, flags=re.M)
    assert not lone, lone

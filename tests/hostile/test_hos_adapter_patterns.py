"""Class 2, for the adapters' ``target_modules`` (issue 16).

A single-string ``target_modules`` is a regular expression matched against every module
name, as PEFT does; it may come from a saved adapter's file. Python's ``re`` backtracks
exponentially on patterns like ``(.*)*Z`` (6 s for a 24-character name, doubling per
character), so the names are matched by the ``regex`` engine under a time limit: such a
pattern is answered at once (here: it matches no module, a one-line error) and a pattern
that would still run past the limit is refused by name. Ordinary patterns choose exactly
the modules ``re.fullmatch`` chooses.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters"))
from helpers_adapters import TASKS, build, tiny

from manytask.adapters import AdapterModel
from manytask.adapters import layer as layer_module
from manytask.adapters.layer import matches
from manytask.adapters.saving import load_adapter, save_adapter

EVIL = ["(.*)*Z", "([a-z_.0-9]+)+Z", "((\\w|\\.)+)+Z", "(\\w+\\.?)+Z", "(.*.*)*$Z"]
ORDINARY = [".*query", ".*(query|value)", "encoder\\.layer\\.0\\..*", ".*attention\\.self\\..*",
            "(.*\\.)?dense", "encoder\\.layer\\.\\d+\\.output\\.dense"]


@pytest.mark.parametrize("pattern", EVIL)
def test_a_backtracking_pattern_in_a_saved_adapter_cannot_stall_loading(
    tmp_path: Path, pattern: str,
) -> None:
    folder = tmp_path / "adapter"
    save_adapter(build("lora"), folder)
    config = json.loads((folder / "manytask_adapter.json").read_text())
    config["target_modules"] = pattern
    (folder / "manytask_adapter.json").write_text(json.dumps(config))
    began = time.perf_counter()
    with pytest.raises(ValueError, match="match no module"):
        load_adapter(folder, tiny("bert"), TASKS)
    assert time.perf_counter() - began < 10


@pytest.mark.parametrize("pattern", ORDINARY)
def test_ordinary_patterns_choose_what_re_fullmatch_chooses(pattern: str) -> None:
    names = [n for n, _ in tiny("bert").named_modules() if n]
    assert [n for n in names if matches(n, pattern)] == \
        [n for n in names if re.fullmatch(pattern, n)]


def test_a_pattern_past_the_time_limit_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import regex

    def slow(*args: object, **kwargs: object) -> None:
        raise TimeoutError("regex timed out")

    monkeypatch.setattr(regex, "fullmatch", slow)
    with pytest.raises(ValueError, match=r"takes over .*exponential backtracking"):
        AdapterModel(tiny("bert"), TASKS, "lora", target_modules="(x+)+y")
    assert layer_module.MATCH_SECONDS <= 1

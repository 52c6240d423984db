"""Class 6: outputs that replace the user's files (issue 16).

An output folder holding anything a merge did not write (its manifest lists what it wrote)
is refused, naming the file, unless ``--overwrite``. A previous result is replaced so that
one complete result is in place at every instant (an atomic exchange of the two folders),
and leftovers of writes killed at any point (simulated here by raising at that point; real
SIGKILLs are in tests/faults/test_kill_merge.py) are recovered or removed at the next start,
with a note saying what was done.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hos_helpers import (
    assert_cli_one_line,
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    run_cli,
    tree,
    write_yaml,
)

from manytask.merging import merge, writer
from manytask.merging.writer import MANIFEST, AtomicDirectory, recover


@pytest.fixture
def setup(tmp_path: Path) -> tuple[dict, dict, Path]:
    base, models = family(tmp_path / "models")
    first = merge_config(base, models)
    second = merge_config(base, models)
    second["models"][0]["parameters"]["weight"] = 0.9
    return first, second, tmp_path / "out"


# what the user put into the output folder -> the entry named in the refusal
FOREIGN = {
    "a file": ("notes.txt", "notes.txt"),
    "a hidden file": (".env", ".env"),
    "a folder": ("runs/log.txt", "runs"),
    "a file named like ours": ("model-00001-of-00002.safetensors", "model-00001"),
    "a file in a subfolder": ("sub/deep/x.bin", "sub"),
}


@pytest.mark.parametrize("previous", [False, True], ids=["fresh folder", "previous merge"])
@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_foreign_files_are_refused(setup, case: str, previous: bool) -> None:
    first, second, out = setup
    if previous:
        merge(first, out)
    rel, needle = FOREIGN[case]
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text("the user's")
    before = tree(out)
    raises_clear(lambda: merge(second, out), needle, "--overwrite")
    assert tree(out) == before
    assert_no_partial(out.parent, "out")


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_overwrite_replaces_them(setup, case: str) -> None:
    first, _, out = setup
    rel, _ = FOREIGN[case]
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text("the user's")
    merge(first, out, overwrite=True)
    assert not (out / rel).exists()
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(p for p in tree(out) if p != MANIFEST)


@pytest.mark.parametrize(
    "manifest",
    ["not json", '{"files": "all"}', '{"files": []}', "[" * 10000, None],
    ids=["junk", "wrong type", "empty list", "deep", "missing (older manytask)"],
)
def test_a_folder_without_a_valid_manifest_is_foreign(setup, manifest: str | None) -> None:
    first, second, out = setup
    merge(first, out)
    if manifest is None:
        (out / MANIFEST).unlink()
    else:
        (out / MANIFEST).write_text(manifest)
    before = tree(out)
    raises_clear(lambda: merge(second, out), "--overwrite")
    assert tree(out) == before


def test_previous_result_is_replaced(setup) -> None:
    first, second, out = setup
    merge(first, out)
    old = tree(out)
    merge(second, out)
    assert tree(out) != old
    assert_no_partial(out.parent, "out")


def test_cli_refusal_and_overwrite(setup, tmp_path: Path, capsys) -> None:
    first, _, out = setup
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    path = write_yaml(tmp_path / "merge.yaml", first)
    code, err = run_cli(["merge", "--quiet", str(path), str(out)], capsys)
    assert_cli_one_line(code, err, "precious.txt", "--overwrite")
    assert (out / "precious.txt").read_text() == "mine"
    code, _ = run_cli(["merge", "--quiet", "--overwrite", str(path), str(out)], capsys)
    assert code == 0 and not (out / "precious.txt").exists()


class Killed(Exception):
    """Stands for a SIGKILL at a point of the replacement."""


def _kill_between(monkeypatch: pytest.MonkeyPatch, exchange: bool, seen: list) -> None:
    out_holds: list = seen

    def between() -> None:
        out_holds.append(True)
        raise Killed

    monkeypatch.setattr(writer, "_between_renames", between)
    if not exchange:
        monkeypatch.setattr(writer, "_exchange", lambda a, b: False)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two renames"])
def test_kill_between_the_renames(setup, monkeypatch, exchange: bool) -> None:
    first, second, out = setup
    merge(first, out)
    old = tree(out)
    reached: list = []
    _kill_between(monkeypatch, exchange, reached)
    with pytest.raises(Killed):
        merge(second, out)
    assert reached
    monkeypatch.undo()
    if exchange:  # one step: the new result is complete in place
        assert tree(out) != old and (out / MANIFEST).is_file()
    else:  # the old result aside, under a clear name, until the next start
        assert not out.exists()
        assert len(list(out.parent.glob(".out.old-*"))) == 1
    notes = recover(out)
    assert notes and (exchange or "restored" in notes[0])
    if not exchange:
        assert tree(out) == old
    assert_no_partial(out.parent, "out")
    report = merge(second, out)  # and the next merge works
    assert not report.notes and (out / MANIFEST).is_file()


def test_one_complete_result_at_every_instant(setup, monkeypatch) -> None:
    first, second, out = setup
    merge(first, out)
    checked: list = []

    def between() -> None:  # right after the exchange: the target is a complete result
        checked.append(json.loads((out / MANIFEST).read_text())["files"])

    monkeypatch.setattr(writer, "_between_renames", between)
    merge(second, out)
    assert checked and all((out / f).is_file() for f in checked[0])


@pytest.mark.parametrize("leftovers", [1, 3])
def test_partial_writes_are_removed_with_a_note(setup, capsys, tmp_path, leftovers) -> None:
    first, _, out = setup
    for i in range(leftovers):
        (out.parent / f".out.partial-killed{i}").mkdir()
        (out.parent / f".out.partial-killed{i}" / "model.safetensors").write_text("half")
    (out.parent / ".other.partial-x").mkdir()  # another output's: not touched
    path = write_yaml(tmp_path / "merge.yaml", first)
    code, err = run_cli(["merge", "--quiet", str(path), str(out)], capsys)
    assert code == 0
    assert err.count("removed .out.partial-killed") == leftovers
    assert_no_partial(out.parent, "out")
    assert (out.parent / ".other.partial-x").is_dir()


def test_refused_output_triggers_no_read(setup, monkeypatch) -> None:
    _, second, out = setup
    out.mkdir()
    (out / "notes.txt").write_text("x")
    from manytask.merging import api

    def no_read(*args, **kwargs):
        raise AssertionError("inputs opened before the output was checked")

    monkeypatch.setattr(api, "_open_inputs", no_read)
    with pytest.raises(ValueError, match=r"notes\.txt"):
        AtomicDirectory(out)
    with pytest.raises(ValueError, match=r"notes\.txt"):
        merge(second, out)

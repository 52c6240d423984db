"""Class 6: two merges into one output folder (issue 16).

A merge holds ``.OUT.lock`` (:class:`manytask.locks.FolderLock`, the lock the Trainer's run
folder uses) from before it clears leftovers until its result is in place. A second merge
into the same folder, while the first runs, is refused with one line naming the holder (exit
2), and touches neither the first's temporary folder nor its result; a lock left by a killed
merge is stale and taken over, with a note. A refused merge leaves no lock file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hos_helpers import (
    assert_cli_one_line,
    family,
    merge_config,
    run_cli,
    tree,
    write_yaml,
)
from safetensors.torch import load_file

from manytask.locks import FolderBusyError, FolderLock, lock_holder
from manytask.merging import merge
from manytask.merging.writer import output_lock

ROOT = Path(__file__).resolve().parents[2]

# A first merge that stops inside its write (after its first tensor) until told to go on.
FIRST = """
import sys, time
from pathlib import Path
from manytask.merging import merge
go = Path(sys.argv[3])
def progress(i, n, name):
    if i == 0:
        print("writing", flush=True)
        while not go.exists():
            time.sleep(0.02)
merge(sys.argv[1], sys.argv[2], progress=progress)
print("done", flush=True)
"""


def _first_merge(cfg: Path, out: Path, go: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", FIRST, str(cfg), str(out), str(go)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"  # the first holds the lock now
    return proc


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    base, models = family(tmp_path / "in")
    return base, write_yaml(tmp_path / "merge.yaml", merge_config(base, models))


@pytest.mark.parametrize("previous", [False, True], ids=["new-output", "over-previous-result"])
def test_a_second_merge_into_the_same_folder_is_refused_and_the_first_completes(
    tmp_path: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    previous: bool,
) -> None:
    _, cfg = inputs
    out = tmp_path / "out"
    if previous:
        merge(cfg, out)
    before = tree(out)
    go = tmp_path / "go"
    first = _first_merge(cfg, out, go)
    try:
        partials = sorted(p.name for p in tmp_path.glob(".out.partial-*"))
        assert len(partials) == 1  # the first's write in progress
        code, err = run_cli(["merge", str(cfg), str(out), "--quiet"], capsys)
        assert code == 2
        assert_cli_one_line(code, err, "in use by another merge", f"process {first.pid}")
        # nothing of the first was touched: its temporary folder, the previous result
        assert sorted(p.name for p in tmp_path.glob(".out.partial-*")) == partials
        assert tree(out) == before
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0
    assert first.stdout is not None and first.stdout.read().strip() == "done"
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == {"layer.0.weight", "layer.0.bias", "layer.1.weight"}
    assert not list(tmp_path.glob(".out.*"))  # no lock, no partial left


@pytest.mark.parametrize("holder", [
    {"pid": 2**22 + 12345, "host": "elsewhere", "since": "2020-01-01T00:00:00+00:00"},
    "not json at all",
    "",
], ids=["dead-pid", "garbage", "empty"])
def test_a_stale_lock_of_a_dead_merge_is_taken_over_with_a_note(
    tmp_path: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    holder: object,
) -> None:
    _, cfg = inputs
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    lock.write_text(holder if isinstance(holder, str) else json.dumps(holder))
    code, err = run_cli(["merge", str(cfg), str(out), "--quiet"], capsys)
    assert code == 0, err
    if holder:  # a recorded holder is named; an empty file was never held
        assert "took over the stale lock" in err
    assert (out / "model.safetensors").is_file()
    assert not lock.exists()


def test_a_live_holder_refuses_in_process_and_the_lock_is_the_run_folders(
    tmp_path: Path, inputs: tuple[Path, Path],
) -> None:
    _, cfg = inputs
    out = tmp_path / "out"
    held = output_lock(out.absolute())
    assert isinstance(held, FolderLock)
    held.acquire()
    try:
        assert lock_holder(held.path) == f"process {os.getpid()} on " + \
            json.loads(held.path.read_text())["host"] + " since " + \
            json.loads(held.path.read_text())["since"]
        with pytest.raises(FolderBusyError, match="in use by another merge"):
            merge(cfg, out)
        assert not out.exists()
    finally:
        held.release()
    assert lock_holder(held.path) is None
    merge(cfg, out)
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("why", ["bad-config-value", "missing-input"])
def test_a_refused_merge_leaves_no_lock_and_no_folder(tmp_path: Path, inputs: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str],
                                                     why: str) -> None:
    base, cfg = inputs
    data = merge_config(base, [base.parent / "m0", base.parent / "m1"])
    if why == "missing-input":
        data["models"][1]["model"] = str(tmp_path / "nowhere")
    else:
        data["parameters"] = {"lambda": "many"}
    write_yaml(cfg, data)
    out = tmp_path / "deep" / "er" / "out"
    code, err = run_cli(["merge", str(cfg), str(out), "--quiet"], capsys)
    assert_cli_one_line(code, err)
    assert not (tmp_path / "deep").exists()  # the parents it would have created: none left

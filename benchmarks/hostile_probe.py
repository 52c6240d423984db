"""A probe of issue 16's failure classes through the command line, as a user meets them.

Each case builds hostile files in a scratch folder, runs ``manytask ...`` (``manytask.cli.main``
in a forked child, with a timeout: a hang is a finding, never a stuck probe) and records the
exit code, whether stderr is one line, whether a traceback or internal error appeared, and
what the case's own check says about written files (damaged, non-finite, left over).

A case *fails* when the command should refuse and does not end with exit 2 and one line on
stderr, when it should succeed and does not, when it hangs, or when its check finds damage.

    python benchmarks/hostile_probe.py [--only SUBSTRING] [--json OUT.json]

prints one line per case and a table of failures per class. The cases are kept as a record
of the probe of docs/hostile.md; every failure found was turned into a test of tests/hostile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# one thread: the cases run in forked children, and a child of a process whose OpenMP pool
# is running can deadlock
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's manytask, not an installed one
sys.path.insert(0, str(ROOT / "tests" / "hostile"))
sys.path.insert(0, str(ROOT / "tests" / "data" / "declared"))


@dataclass
class Setup:
    argv: list[str]
    expect: str = "refuse"  # "refuse": exit 2, one line; "ok": exit 0
    check: Callable[[], str | None] | None = None  # after the run: a problem, or None
    before: Callable[[], None] | None = None  # in the child, before main (monkeypatches)
    needle: str | None = None  # the refusal must name this
    call: Callable[[], int] | None = None  # instead of the command line: a library call


@dataclass
class Case:
    cls: int
    name: str
    build: Callable[[Path], Setup]
    timeout: float = 60.0


@dataclass
class Outcome:
    case: str
    cls: int
    code: int | None
    lines: int
    traceback: bool
    hang: bool
    problem: str | None = None
    first_line: str = ""
    failed: bool = field(default=False)


CASES: list[Case] = []


def case(cls: int, name: str, timeout: float = 60.0) -> Callable[[Callable[[Path], Setup]],
                                                                  Callable[[Path], Setup]]:
    def register(build: Callable[[Path], Setup]) -> Callable[[Path], Setup]:
        CASES.append(Case(cls, name, build, timeout))
        return build

    return register


# ---------------------------------------------------------------------------- fixtures
FIX: dict[str, Path] = {}


def fixtures(root: Path) -> None:
    """A trained ``data: files`` run, its data in three formats, a merge family and a LoRA
    adapter: copied into each case's folder by the cases that need them."""
    from hos_helpers import family, write_adapter
    from hos_runs import trained_files_run

    base = trained_files_run(root / "base")
    FIX["data"] = base / "data"
    FIX["run"] = base / "run"
    fam = root / "family"
    family(fam, 2)
    write_adapter(fam / "lora")
    FIX["family"] = fam


def copy_run(tmp: Path) -> Path:
    shutil.copytree(FIX["run"], tmp / "run", symlinks=True)
    shutil.copy(FIX["data"] / "shop.csv", tmp / "shop.csv")
    return tmp / "run"


def copy_family(tmp: Path) -> Path:
    shutil.copytree(FIX["family"], tmp / "family", symlinks=True)
    return tmp / "family"


def train_yaml(tmp: Path, **extra: Any) -> Path:
    import yaml

    data = tmp / "data"
    if not data.exists():
        shutil.copytree(FIX["data"], data, ignore=shutil.ignore_patterns("run", "cache"))
    cfg = yaml.safe_load((data / "train.yaml").read_text())
    cfg["data_root"] = str(data)
    cfg["cache_dir"] = str(tmp / "cache")
    cfg.update(extra)
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def merge_yaml(tmp: Path, fam: Path, **extra: Any) -> Path:
    from hos_helpers import merge_config, write_yaml

    return write_yaml(tmp / "merge.yaml",
                      merge_config(fam / "base", [fam / "m0", fam / "m1"], **extra))


def link_out(path: Path, outside: Path) -> None:
    """Replace ``path`` by a link to a copy of it in ``outside``."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / path.name
    shutil.move(str(path), target)
    path.symlink_to(target)


def fifo(path: Path) -> None:
    if path.exists() or path.is_symlink():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    os.mkfifo(path)


def ckpt(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def nothing_at(path: Path) -> Callable[[], str | None]:
    return lambda: f"{path.name} was written" if path.exists() else None


def finite_file(path: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        if not path.exists():
            return None
        text = path.read_text()
        for bad in ("nan", "NaN", "inf", "Infinity"):
            if bad in text:
                return f"{path.name} holds {bad}"
        return None

    return check


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))
DEEP_JSON = "[" * 100_000 + "]" * 100_000


# ---------------------------------------------------------------------------- class 1: links
@case(1, "predict: run's config.yaml links out")
def _c1a(tmp: Path) -> Setup:
    run = copy_run(tmp)
    link_out(run / "config.yaml", tmp / "elsewhere")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], check=nothing_at(tmp / "p.csv"),
                 needle="config.yaml")


@case(1, "predict: preprocessing.json links out")
def _c1b(tmp: Path) -> Setup:
    run = copy_run(tmp)
    link_out(run / "preprocessing.json", tmp / "elsewhere")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], check=nothing_at(tmp / "p.csv"),
                 needle="preprocessing.json")


@case(1, "evaluate: checkpoint's model.safetensors links out")
def _c1c(tmp: Path) -> Setup:
    run = copy_run(tmp)
    link_out(ckpt(run) / "model.safetensors", tmp / "elsewhere")
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "m.json")], check=nothing_at(tmp / "m.json"),
                 needle="model.safetensors")


@case(1, "evaluate: checkpoint folder links out")
def _c1d(tmp: Path) -> Setup:
    run = copy_run(tmp)
    link_out(ckpt(run), tmp / "elsewhere")
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "m.json")], check=nothing_at(tmp / "m.json"))


@case(1, "predict: link-out accepted with --allow-outside-links")
def _c1e(tmp: Path) -> Setup:
    run = copy_run(tmp)
    link_out(run / "preprocessing.json", tmp / "elsewhere")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv"), "--allow-outside-links"], expect="ok")


@case(1, "train: data file under data_root links out")
def _c1f(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    link_out(tmp / "data" / "shop.csv", tmp / "elsewhere")
    return Setup(["train", "--config", str(cfg), "--run-dir", str(tmp / "r")],
                 check=nothing_at(tmp / "r"), needle="shop.csv")


@case(1, "train: data file links out, --allow-outside-links trains")
def _c1g(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    link_out(tmp / "data" / "shop.csv", tmp / "elsewhere")
    return Setup(["train", "--config", str(cfg), "--allow-outside-links"], expect="ok")


@case(1, "train --resume: checkpoint state.json links out")
def _c1h(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    run = copy_run(tmp)
    link_out(ckpt(run) / "state.json", tmp / "elsewhere")
    return Setup(["train", "--config", str(cfg), "--run-dir", str(run), "--resume",
                  "--epochs", "2"], needle="state.json")


@case(1, "train --resume: link-out checkpoint accepted with --allow-outside-links")
def _c1i(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    run = copy_run(tmp)
    link_out(ckpt(run) / "optimizer.safetensors", tmp / "elsewhere")
    return Setup(["train", "--config", str(cfg), "--run-dir", str(run), "--resume",
                  "--epochs", "2", "--allow-outside-links"], expect="ok")


@case(1, "train: datasets folder (hf) with a file linking out")
def _c1j(tmp: Path) -> Setup:
    import datasets
    import pyarrow.csv as pacsv

    cfg_path = train_yaml(tmp)
    table = pacsv.read_csv(tmp / "data" / "shop.csv")
    datasets.Dataset(table).save_to_disk(str(tmp / "data" / "hfset"))
    arrow = next((tmp / "data" / "hfset").glob("*.arrow"))
    link_out(arrow, tmp / "elsewhere")
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["dataset"]["table"]["file"] = "hfset"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return Setup(["train", "--config", str(cfg_path)], needle=arrow.name)


@case(1, "report: a bench cell folder linking out")
def _c1k(tmp: Path) -> Setup:
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench, symlinks=True)
    cell = next(p for p in (bench / "cells").iterdir() if p.is_dir())
    link_out(cell, tmp / "elsewhere")
    return Setup(["report", str(bench), "--out", str(tmp / "rep")],
                 check=nothing_at(tmp / "rep"))


@case(1, "merge: copied config.json links out, --allow-outside-links merges")
def _c1l(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    link_out(fam / "base" / "config.json", tmp / "elsewhere")
    return Setup(["merge", str(merge_yaml(tmp, fam)), str(tmp / "out"), "--quiet",
                  "--allow-outside-links"], expect="ok")


@case(1, "merge: LoRA adapter_config.json links out")
def _c1m(tmp: Path) -> Setup:
    from hos_helpers import merge_config, write_yaml

    fam = copy_family(tmp)
    link_out(fam / "lora" / "adapter_config.json", tmp / "elsewhere")
    cfg = write_yaml(tmp / "merge.yaml", merge_config(fam / "base", [fam / "lora"]))
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"],
                 check=nothing_at(tmp / "out"), needle="adapter_config.json")


# ---------------------------------------------------------------------------- class 2: patterns
def adapter_model(tmp: Path, targets: Any) -> tuple[Any, Any, Path]:
    """A tiny saved LoRA adapter on a tiny BERT whose config's target_modules is ``targets``."""
    sys.path.insert(0, str(ROOT / "tests" / "adapters"))
    from helpers_adapters import TASKS, build, tiny

    from manytask.adapters.saving import save_adapter

    folder = tmp / "adapter"
    save_adapter(build("lora"), folder)
    cfg = json.loads((folder / "manytask_adapter.json").read_text())
    cfg["target_modules"] = targets
    (folder / "manytask_adapter.json").write_text(json.dumps(cfg))
    return (lambda: tiny("bert")), TASKS, folder


def _api_case(call: Callable[[], Any], expect: str = "refuse") -> Setup:
    """A library call (no command for it) run like a command: a ValueError is a refusal."""
    def run() -> int:
        try:
            call()
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"manytask api: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
        return 0

    return Setup(["api"], call=run, expect=expect)


@case(2, "adapters: saved target_modules pattern with nested quantifiers", timeout=60)
def _c2a(tmp: Path) -> Setup:
    from manytask.adapters.saving import load_adapter

    base, tasks, folder = adapter_model(tmp, "([a-z_.0-9]+)+Z")
    return _api_case(lambda: load_adapter(folder, base(), tasks))


@case(2, "merge: parameter filter with regex characters is matched as text", timeout=30)
def _c2b(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    cfg = merge_yaml(tmp, fam)
    import yaml

    data = yaml.safe_load(cfg.read_text())
    data["parameters"] = {"weight": [{"filter": "(a+)+" * 20 + "$", "value": 0.3},
                                     {"value": 0.5}]}
    cfg.write_text(yaml.safe_dump(data))
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"], expect="ok")


@case(2, "merge: LoRA rank_pattern key of 100 000 characters", timeout=30)
def _c2c(tmp: Path) -> Setup:
    from hos_helpers import merge_config, write_yaml

    fam = copy_family(tmp)
    spec = json.loads((fam / "lora" / "adapter_config.json").read_text())
    spec["rank_pattern"] = {"layer" * 20_000: 2}
    (fam / "lora" / "adapter_config.json").write_text(json.dumps(spec))
    cfg = write_yaml(tmp / "merge.yaml", merge_config(fam / "base", [fam / "lora"]))
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"], expect="ok")


@case(2, "train: --monitor with regex characters", timeout=30)
def _c2d(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    return Setup(["train", "--config", str(cfg), "--monitor", "(a+)+$/(a+)+$",
                  "--early-stopping", "1"], needle="monitor")


# ---------------------------------------------------------------------------- class 3: bombs
@case(3, "predict: alias bomb in the run's config.yaml", timeout=60)
def _c3a(tmp: Path) -> Setup:
    run = copy_run(tmp)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + BOMB)
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], needle="alias")


@case(3, "evaluate: deeply nested preprocessing.json")
def _c3b(tmp: Path) -> Setup:
    run = copy_run(tmp)
    (run / "preprocessing.json").write_text(DEEP_JSON)
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv")],
                 needle="preprocessing.json")


@case(3, "train --resume: alias bomb in the run's config.yaml", timeout=60)
def _c3c(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    run = copy_run(tmp)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + BOMB)
    return Setup(["train", "--config", str(cfg), "--run-dir", str(run), "--resume",
                  "--epochs", "2"], needle="alias")


@case(3, "train: alias bomb inside the dataset section", timeout=60)
def _c3d(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    cfg.write_text(cfg.read_text() + BOMB.replace("a: &a", "junk: &a", 1))
    return Setup(["train", "--config", str(cfg)])


@case(3, "train: a 5 MB task name in the config is cut in the message")
def _c3e(tmp: Path) -> Setup:
    cfg = train_yaml(tmp, tasks=["x" * 5_000_000])
    return Setup(["train", "--config", str(cfg)])


@case(3, "merge: deeply nested tokenizer.json read for tokenizer_source")
def _c3f(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    for name in ("base", "m0", "m1"):
        (fam / name / "tokenizer.json").write_text(DEEP_JSON)
    return Setup(["merge", str(merge_yaml(tmp, fam, tokenizer_source="base")),
                  str(tmp / "out"), "--quiet"],
                 check=nothing_at(tmp / "out"))


@case(3, "merge: deeply nested config.json of the base, read for out_dtype")
def _c3g(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    (fam / "base" / "config.json").write_text(DEEP_JSON)
    # (the bounded parser refuses it; the file is then copied as the base had it: exit 0)
    return Setup(["merge", str(merge_yaml(tmp, fam, out_dtype="float16")), str(tmp / "out"),
                  "--quiet"], expect="ok")


@case(3, "train: data JSONL with 100 000-deep nesting in a row")
def _c3h(tmp: Path) -> Setup:
    import yaml

    cfg = train_yaml(tmp)
    lines = (tmp / "data" / "shop.jsonl").read_text().splitlines()
    lines[3] = lines[3][:-1] + ', "junk": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (tmp / "data" / "shop.jsonl").write_text("\n".join(lines) + "\n")
    data = yaml.safe_load(cfg.read_text())
    data["dataset"]["table"]["file"] = "shop.jsonl"
    cfg.write_text(yaml.safe_dump(data))
    return Setup(["train", "--config", str(cfg)])


@case(3, "report: alias bomb in a bench cell's config", timeout=60)
def _c3i(tmp: Path) -> Setup:
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench)
    cell = next(p for p in (bench / "cells").iterdir() if p.is_dir())
    (cell / "config.yaml").write_text((cell / "config.yaml").read_text() + BOMB)
    # (report reads bench.yaml and the results, not a cell's recorded config: exit 0)
    return Setup(["report", str(bench), "--out", str(tmp / "rep")], expect="ok")


@case(3, "report: one train run whose preprocessing.json is deeply nested")
def _c3j(tmp: Path) -> Setup:
    run = copy_run(tmp)
    (run / "preprocessing.json").write_text(DEEP_JSON)
    return Setup(["report", str(run), "--out", str(tmp / "rep")])


# ---------------------------------------------------------------------------- class 4: non-finite
def _scale_checkpoint(run: Path, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    path = ckpt(run) / "model.safetensors"
    state = load_file(str(path))
    save_file({k: (v * factor if v.is_floating_point() else v) for k, v in state.items()},
              str(path))


@case(4, "predict: weights that overflow the logits (NaN probabilities at exit 0?)")
def _c4a(tmp: Path) -> Setup:
    run = copy_run(tmp)
    _scale_checkpoint(run, 1e30)
    out = tmp / "p.csv"
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(out)], check=nothing_at(out))


@case(4, "evaluate: weights that overflow (NaN metrics at exit 0?)")
def _c4b(tmp: Path) -> Setup:
    run = copy_run(tmp)
    _scale_checkpoint(run, 1e30)
    out = tmp / "m.json"
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(out)], check=nothing_at(out))


@case(4, "predict: checkpoint tensor dtype altered F32 -> I32 in its header")
def _c4c(tmp: Path) -> Setup:
    run = copy_run(tmp)
    path = ckpt(run) / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].replace(b'"F32"', b'"I32"')
    path.write_bytes(raw[:8] + header + raw[8 + n:])
    out = tmp / "p.csv"
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(out)], check=nothing_at(out))


@case(4, "train: --lr nan")
def _c4d(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--lr", "nan"], needle="lr")


@case(4, "train: --lr 1e30 (diverges) writes no checkpoint")
def _c4e(tmp: Path) -> Setup:
    run = tmp / "r"
    return Setup(["train", "--config", str(train_yaml(tmp)), "--lr", "1e30",
                  "--run-dir", str(run)],
                 check=lambda: "a checkpoint was written" if list(run.glob(
                     "checkpoints/epoch-*")) else None)


@case(4, "train: a data file with inf and 1e308 in a numeric column")
def _c4f(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    lines = (tmp / "data" / "shop.csv").read_text().splitlines()
    for i in (2, 5):
        parts = lines[i].split(",")
        parts[0] = "inf" if i == 2 else "1e308"
        lines[i] = ",".join(parts)
    (tmp / "data" / "shop.csv").write_text("\n".join(lines) + "\n")
    run = tmp / "r"
    return Setup(["train", "--config", str(cfg), "--run-dir", str(run)], needle="inf",
                 check=lambda: _finite_run(run))


def _finite_run(run: Path) -> str | None:
    import math

    import torch
    from safetensors.torch import load_file

    for path in run.glob("checkpoints/epoch-*/model.safetensors"):
        for k, v in load_file(str(path)).items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"{k} non-finite in {path.parent.name}"
    pre = run / "preprocessing.json"
    if pre.exists():
        text = pre.read_text()
        if "NaN" in text or "Infinity" in text:
            return "preprocessing.json holds NaN/Infinity"
    metrics = run / "metrics.csv"
    if metrics.exists():
        for line in metrics.read_text().splitlines()[1:]:
            for cell in line.split(","):
                try:
                    if not math.isfinite(float(cell)):
                        return f"metrics.csv holds {cell}"
                except ValueError:
                    pass
    return None


@case(4, "merge: weight nan in the config")
def _c4g(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    cfg = merge_yaml(tmp, fam)
    cfg.write_text(cfg.read_text().replace("weight: 0.5", "weight: .nan", 1))
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"],
                 check=nothing_at(tmp / "out"))


@case(4, "merge: ties with density inf")
def _c4h(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    cfg = merge_yaml(tmp, fam, merge_method="ties", parameters={"density": float("inf")})
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"],
                 check=nothing_at(tmp / "out"))


@case(4, "merge: slerp t: -inf")
def _c4i(tmp: Path) -> Setup:
    from hos_helpers import write_yaml

    fam = copy_family(tmp)
    cfg = write_yaml(tmp / "merge.yaml", {
        "merge_method": "slerp", "base_model": str(fam / "m0"),
        "models": [{"model": str(fam / "m0")}, {"model": str(fam / "m1")}],
        "parameters": {"t": float("-inf")}})
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"],
                 check=nothing_at(tmp / "out"))


@case(4, "report: a bench cell result holding NaN metrics")
def _c4j(tmp: Path) -> Setup:
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench)
    for result in (bench / "cells").glob("*/result.json"):
        result.write_text(result.read_text().replace("0.", "NaN, \"x\": 0.", 1)
                          if False else _nan_result(result.read_text()))
        break
    return Setup(["report", str(bench), "--out", str(tmp / "rep")],
                 check=finite_file(tmp / "rep" / "summary.md"))


def _nan_result(text: str) -> str:
    data = json.loads(text)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, float):
            return float("nan")
        return v

    return json.dumps(walk(data))


# ---------------------------------------------------------------------------- class 5: not files
@case(5, "predict: --data is a named pipe", timeout=30)
def _c5a(tmp: Path) -> Setup:
    run = copy_run(tmp)
    fifo(tmp / "pipe.csv")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "pipe.csv"),
                  "--out", str(tmp / "p.csv")], needle="pipe.csv")


@case(5, "predict: run's preprocessing.json is a named pipe", timeout=30)
def _c5b(tmp: Path) -> Setup:
    run = copy_run(tmp)
    fifo(run / "preprocessing.json")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], needle="preprocessing.json")


@case(5, "evaluate: checkpoint's model.safetensors is a named pipe", timeout=30)
def _c5c(tmp: Path) -> Setup:
    run = copy_run(tmp)
    fifo(ckpt(run) / "model.safetensors")
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv")],
                 needle="model.safetensors")


@case(5, "train: dataset file is a named pipe", timeout=30)
def _c5d(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    fifo(tmp / "data" / "shop.csv")
    return Setup(["train", "--config", str(cfg)], needle="shop.csv")


@case(5, "train --resume: run's config.yaml is a named pipe", timeout=30)
def _c5e(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    run = copy_run(tmp)
    fifo(run / "config.yaml")
    return Setup(["train", "--config", str(cfg), "--run-dir", str(run), "--resume",
                  "--epochs", "2"], needle="config.yaml")


@case(5, "train: --config /dev/zero", timeout=30)
def _c5f(tmp: Path) -> Setup:
    return Setup(["train", "--config", "/dev/zero"], needle="/dev/zero")


@case(5, "report: bench.yaml is a named pipe", timeout=30)
def _c5g(tmp: Path) -> Setup:
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench)
    fifo(bench / "bench.yaml")
    return Setup(["report", str(bench), "--out", str(tmp / "rep")], needle="bench.yaml")


@case(5, "report: a bench cell's metrics.csv is a named pipe", timeout=30)
def _c5h(tmp: Path) -> Setup:
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench)
    cell = next(p for p in (bench / "cells").iterdir() if p.is_dir())
    fifo(cell / "metrics.csv")
    return Setup(["report", str(bench), "--out", str(tmp / "rep")], needle="metrics.csv")


@case(5, "report: a train run's preprocessing.json is a named pipe", timeout=30)
def _c5h2(tmp: Path) -> Setup:
    run = copy_run(tmp)
    fifo(run / "preprocessing.json")
    return Setup(["report", str(run), "--out", str(tmp / "rep")])


@case(5, "merge: LoRA adapter_model.safetensors is a named pipe", timeout=30)
def _c5i(tmp: Path) -> Setup:
    from hos_helpers import merge_config, write_yaml

    fam = copy_family(tmp)
    fifo(fam / "lora" / "adapter_model.safetensors")
    cfg = write_yaml(tmp / "merge.yaml", merge_config(fam / "base", [fam / "lora"]))
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"])


@case(5, "merge: base tokenizer_config.json is a named pipe", timeout=30)
def _c5j(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    fifo(fam / "base" / "tokenizer_config.json")
    return Setup(["merge", str(merge_yaml(tmp, fam)), str(tmp / "out"), "--quiet"],
                 check=nothing_at(tmp / "out"))


@case(5, "group: matrix CSV is a named pipe", timeout=30)
def _c5k(tmp: Path) -> Setup:
    fifo(tmp / "m.csv")
    return Setup(["group", str(tmp / "m.csv"), "--budget", "2"], needle="m.csv")


@case(5, "train: datasets (hf) folder holding a named pipe", timeout=30)
def _c5l(tmp: Path) -> Setup:
    import datasets
    import pyarrow.csv as pacsv
    import yaml

    cfg_path = train_yaml(tmp)
    table = pacsv.read_csv(tmp / "data" / "shop.csv")
    datasets.Dataset(table).save_to_disk(str(tmp / "data" / "hfset"))
    fifo(tmp / "data" / "hfset" / "state.json")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["dataset"]["table"]["file"] = "hfset"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return Setup(["train", "--config", str(cfg_path)], needle="state.json")


# ---------------------------------------------------------------------------- class 6: outputs
@case(6, "predict: --out is the --data file (input replaced)")
def _c6a(tmp: Path) -> Setup:
    run = copy_run(tmp)
    data = tmp / "shop.csv"
    before = data.read_bytes()
    return Setup(["predict", "--run-dir", str(run), "--data", str(data), "--out", str(data)],
                 check=lambda: "the input file was replaced" if data.read_bytes() != before
                 else None)


@case(6, "predict: --out is an existing file of the user's")
def _c6b(tmp: Path) -> Setup:
    run = copy_run(tmp)
    mine = tmp / "mine.csv"
    mine.write_text("precious,data\n1,2\n")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(mine)],
                 check=lambda: "the user's file was replaced"
                 if mine.read_text() != "precious,data\n1,2\n" else None)


@case(6, "predict --overwrite: an existing --out is replaced")
def _c6c(tmp: Path) -> Setup:
    run = copy_run(tmp)
    mine = tmp / "mine.csv"
    mine.write_text("old\n")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(mine), "--overwrite"], expect="ok",
                 check=lambda: None if mine.read_text().lstrip('"').startswith("row")
                 else "not replaced")


@case(6, "evaluate: --out is an existing file of the user's")
def _c6d(tmp: Path) -> Setup:
    run = copy_run(tmp)
    mine = tmp / "notes.json"
    mine.write_text('{"mine": 1}')
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(mine)],
                 check=lambda: "the user's file was replaced" if mine.read_text() !=
                 '{"mine": 1}' else None)


@case(6, "predict: killed write leaves .p.csv.tmp; the next run names or removes it")
def _c6e(tmp: Path) -> Setup:
    run = copy_run(tmp)
    (tmp / ".p.csv.tmp").write_text("half")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], expect="ok",
                 check=lambda: "leftover kept silently" if (tmp / ".p.csv.tmp").exists()
                 else None)


@case(6, "report: --out folder holding the user's summary.md")
def _c6f(tmp: Path) -> Setup:
    out = tmp / "mine"
    out.mkdir()
    (out / "summary.md").write_text("my notes")
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench)
    return Setup(["report", str(bench), "--out", str(out)],
                 check=lambda: "the user's summary.md was replaced"
                 if (out / "summary.md").read_text() != "my notes" else None)


@case(6, "merge: full disk while writing (ENOSPC from os.replace/write)")
def _c6g(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    out = tmp / "out"

    def before() -> None:
        import errno

        import manytask.merging.writer as w

        real = w.ShardedWriter.write

        def full(self: Any, rows: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        w.ShardedWriter.write = full  # type: ignore[method-assign]
        del real

    return Setup(["merge", str(merge_yaml(tmp, fam)), str(out), "--quiet"], before=before,
                 check=lambda: "partial output left" if list(tmp.glob(".out.*")) or
                 out.exists() else None)


@case(6, "predict: full disk while writing the predictions")
def _c6h(tmp: Path) -> Setup:
    run = copy_run(tmp)
    out = tmp / "p.jsonl"

    def before() -> None:
        import errno

        real = Path.write_text

        def full(self: Path, *a: Any, **k: Any) -> int:
            if self.name.startswith(".p.jsonl"):
                real(self, "partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *a, **k)

        Path.write_text = full  # type: ignore[method-assign]

    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(out)], before=before,
                 check=lambda: "partial file left" if list(tmp.glob("*p.jsonl*")) else None)


@case(6, "train: full disk during the checkpoint write")
def _c6i(tmp: Path) -> Setup:
    run = tmp / "r"

    def before() -> None:
        import errno

        import manytask.training.checkpoint as c

        def full(*a: Any, **k: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        c.save_file = full  # type: ignore[attr-defined]

    return Setup(["train", "--config", str(train_yaml(tmp)), "--run-dir", str(run)],
                 before=before,
                 check=lambda: "a partial checkpoint was left" if list(run.glob(
                     "checkpoints/*tmp*")) or list(run.glob("checkpoints/epoch-*")) else None)


# ---------------------------------------------------------------------------- class 7: succeed
@case(7, "evaluate: every row unusable (metrics of nothing at exit 0?)")
def _c7a(tmp: Path) -> Setup:
    run = copy_run(tmp)
    lines = (tmp / "shop.csv").read_text().splitlines()
    bad = [lines[0]] + [",".join(["oops", *line.split(",")[1:]]) for line in lines[1:]]
    (tmp / "bad.csv").write_text("\n".join(bad) + "\n")
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "bad.csv"),
                  "--out", str(tmp / "m.json")], check=nothing_at(tmp / "m.json"))


@case(7, "evaluate: a label column entirely empty")
def _c7b(tmp: Path) -> Setup:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    run = copy_run(tmp)
    table = pacsv.read_csv(tmp / "shop.csv")
    i = table.column_names.index("price")
    table = table.set_column(i, "price", pa.nulls(table.num_rows, pa.float64()))
    pacsv.write_csv(table, tmp / "nolabel.csv")
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "nolabel.csv"),
                  "--out", str(tmp / "m.json")], check=nothing_at(tmp / "m.json"))


@case(7, "predict: every row unusable (an empty prediction file at exit 0?)")
def _c7c(tmp: Path) -> Setup:
    run = copy_run(tmp)
    lines = (tmp / "shop.csv").read_text().splitlines()
    bad = [lines[0]] + [",".join(["oops", *line.split(",")[1:]]) for line in lines[1:]]
    (tmp / "bad.csv").write_text("\n".join(bad) + "\n")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "bad.csv"),
                  "--out", str(tmp / "p.csv")], check=nothing_at(tmp / "p.csv"))


@case(7, "bench: --seeds with a duplicate runs one cell twice / --methods empty name")
def _c7d(tmp: Path) -> Setup:
    return Setup(["bench", "--run-dir", str(tmp / "b"), "--methods", "equal", "",
                  "--seeds", "0", "--data", "multidigits", "--train-size", "64",
                  "--epochs", "1", "--no-single-task"], check=nothing_at(tmp / "b"))


@case(7, "report: a bench folder with no finished cell")
def _c7e(tmp: Path) -> Setup:
    bench = tmp / "bench"
    shutil.copytree(FIX["bench"], bench)
    for result in (bench / "cells").glob("*/result.json"):
        result.unlink()
    return Setup(["report", str(bench), "--out", str(tmp / "rep")],
                 check=nothing_at(tmp / "rep"))


@case(7, "group: a matrix with a NaN entry")
def _c7f(tmp: Path) -> Setup:
    (tmp / "m.csv").write_text(",a,b,c\na,0,nan,0.1\nb,0.2,0,0.3\nc,0.1,0.2,0\n")
    return Setup(["group", str(tmp / "m.csv"), "--budget", "2", "--out", str(tmp / "g")],
                 check=nothing_at(tmp / "g"))


@case(7, "train: --tasks naming a task twice")
def _c7g(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--tasks", "price", "price"],
                 needle="price")


# ---------------------------------------------------------------------------- class 8: tracebacks
def _preprocessing(tmp: Path, edit: Callable[[dict[str, Any]], Any]) -> Setup:
    run = copy_run(tmp)
    data = json.loads((run / "preprocessing.json").read_text())
    edit(data)
    (run / "preprocessing.json").write_text(json.dumps(data))
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], needle="preprocessing.json")


@case(8, "predict: preprocessing.json is {}")
def _c8a(tmp: Path) -> Setup:
    return _preprocessing(tmp, lambda d: d.clear())


@case(8, "predict: preprocessing.json's tasks is a string")
def _c8b(tmp: Path) -> Setup:
    return _preprocessing(tmp, lambda d: d.__setitem__("tasks", "oops"))


@case(8, "predict: preprocessing.json's numeric scaling holds text")
def _c8c(tmp: Path) -> Setup:
    def edit(d: dict[str, Any]) -> None:
        for value in d.values():
            if isinstance(value, dict):
                for k2 in value:
                    value[k2] = "text"
                break

    return _preprocessing(tmp, edit)


@case(8, "predict: run's config.yaml has an unknown key")
def _c8d(tmp: Path) -> Setup:
    run = copy_run(tmp)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "bogus_key: 1\n")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "p.csv")], needle="bogus_key")


@case(8, "predict: the data file is empty (0 bytes)")
def _c8e(tmp: Path) -> Setup:
    run = copy_run(tmp)
    (tmp / "empty.csv").write_text("")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "empty.csv"),
                  "--out", str(tmp / "p.csv")], needle="empty.csv")


@case(8, "predict: a JSONL data file whose numeric column holds objects")
def _c8f(tmp: Path) -> Setup:
    run = copy_run(tmp)
    rows = [json.loads(line) for line in (FIX["data"] / "shop.jsonl").read_text().splitlines()]
    for r in rows:
        r["x1"] = {"nested": [1, 2]}
    (tmp / "obj.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "obj.jsonl"),
                  "--out", str(tmp / "p.csv")], check=nothing_at(tmp / "p.csv"))


@case(8, "predict: a Parquet file that is truncated")
def _c8g(tmp: Path) -> Setup:
    run = copy_run(tmp)
    raw = (FIX["data"] / "shop.parquet").read_bytes()
    (tmp / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "cut.parquet"),
                  "--out", str(tmp / "p.csv")], needle="cut.parquet")


@case(8, "predict: a Parquet file whose numeric column is a list type")
def _c8h(tmp: Path) -> Setup:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = copy_run(tmp)
    table = pq.read_table(FIX["data"] / "shop.parquet")
    i = table.column_names.index("x1")
    table = table.set_column(i, "x1", pa.array([[1.0, 2.0]] * table.num_rows))
    pq.write_table(table, tmp / "list.parquet")
    return Setup(["predict", "--run-dir", str(run), "--data", str(tmp / "list.parquet"),
                  "--out", str(tmp / "p.csv")], check=nothing_at(tmp / "p.csv"))


@case(8, "train: --seed 2**70")
def _c8i(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--seed", str(2**70)],
                 needle="seed")


@case(8, "train: --batch-size 0")
def _c8j(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--batch-size", "0"],
                 needle="batch_size")


@case(8, "train: --batch-size 10**12")
def _c8k(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--batch-size", str(10**12)],
                 expect="ok")


@case(8, "train: --warmup -5")
def _c8l(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--warmup", "-5"],
                 needle="warmup")


@case(8, "train: --arch-param hidden=[1e11]")
def _c8m(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--arch-param", "hidden=[1e11]"])


@case(8, "train: --arch-param hidden=[-3]")
def _c8n(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--arch-param", "hidden=[-3]"])


@case(8, "train: --optimizer-param lr=.nan (via the optimiser)")
def _c8o(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--optimizer-param",
                  "betas=[2, -1]", "--optimizer", "adam"])


@case(8, "train: --schedule-param step_size=-1 with --schedule step")
def _c8p(tmp: Path) -> Setup:
    return Setup(["train", "--config", str(train_yaml(tmp)), "--schedule", "step",
                  "--schedule-param", "step_size=-1"])


@case(8, "train: max_length: -1 in a files-route dataset")
def _c8q(tmp: Path) -> Setup:
    # (a dataset key since the text tasks became files-route configs; --max-length is gone)
    from declared_tables import table_section

    dataset = {**table_section("shop.csv", text="segment"), "max_length": -1}
    return Setup(["train", "--config", str(train_yaml(tmp, dataset=dataset))],
                 needle="max_length")


@case(8, "train: --train-size 10**15 on multidigits")
def _c8r(tmp: Path) -> Setup:
    return Setup(["train", "--data", "multidigits", "--train-size", str(10**15)])


@case(8, "train: dataset section with a task kind that is a list")
def _c8s(tmp: Path) -> Setup:
    import yaml

    cfg = train_yaml(tmp)
    data = yaml.safe_load(cfg.read_text())
    data["dataset"]["table"]["tasks"][0]["kind"] = ["classification"]
    cfg.write_text(yaml.safe_dump(data))
    return Setup(["train", "--config", str(cfg)], needle="kind")


@case(8, "train: a CSV whose header has a duplicate column")
def _c8t(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    lines = (tmp / "data" / "shop.csv").read_text().splitlines()
    lines[0] = lines[0].replace('"x2"', '"x1"').replace("x2", "x1")
    (tmp / "data" / "shop.csv").write_text("\n".join(lines) + "\n")
    return Setup(["train", "--config", str(cfg)], needle="x1")


@case(8, "train --resume: state.json with step -1 and lr 'fast'")
def _c8u(tmp: Path) -> Setup:
    cfg = train_yaml(tmp)
    run = copy_run(tmp)
    state = json.loads((ckpt(run) / "state.json").read_text())
    state["step"] = "fast"
    (ckpt(run) / "state.json").write_text(json.dumps(state))
    return Setup(["train", "--config", str(cfg), "--run-dir", str(run), "--resume",
                  "--epochs", "2"], needle="step")


@case(8, "affinity: --lookahead-lr nan style option (huge --epochs)")
def _c8v(tmp: Path) -> Setup:
    return Setup(["affinity", "--data", "multidigits", "--epochs", str(10**20)])


@case(8, "group: --budget -3")
def _c8w(tmp: Path) -> Setup:
    (tmp / "m.csv").write_text(",a,b\na,0,0.1\nb,0.2,0\n")
    return Setup(["group", str(tmp / "m.csv"), "--budget", "-3"], needle="budget")


@case(8, "group: --beam-width 10**30")
def _c8x(tmp: Path) -> Setup:
    (tmp / "m.csv").write_text(",a,b,c\na,0,0.1,0.2\nb,0.2,0,0.1\nc,0.1,0.2,0\n")
    return Setup(["group", str(tmp / "m.csv"), "--budget", "2", "--method", "beam",
                  "--beam-width", str(10**30), "--out", str(tmp / "g")], expect="ok")


@case(8, "merge: shard_size -1")
def _c8y(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    return Setup(["merge", str(merge_yaml(tmp, fam, shard_size=-1)), str(tmp / "out"),
                  "--quiet"], needle="shard_size")


@case(8, "merge: --random-seed 2**70 with dare")
def _c8z(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    cfg = merge_yaml(tmp, fam, merge_method="dare_ties", parameters={"density": 0.5})
    # (a seed is hashed as text with the tensor's name: any size is a distinct seed)
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet", "--random-seed",
                  str(2**70)], expect="ok")


@case(8, "merge: a model path holding a NUL byte")
def _c8za(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    cfg = merge_yaml(tmp, fam)
    cfg.write_text(cfg.read_text().replace(str(fam / "m1"), str(fam / "m1") + "\\0x", 1)
                   .replace("model: ", "model: \"", 1).replace("m0\n", "m0\"\n", 1))
    import yaml

    data = yaml.safe_load((tmp / "merge.yaml").read_text()) if False else None
    del data
    from hos_helpers import merge_config, write_yaml

    write_yaml(cfg, merge_config(fam / "base", [str(fam / "m0") + "\x00x", fam / "m1"]))
    return Setup(["merge", str(cfg), str(tmp / "out"), "--quiet"])


@case(8, "evaluate: --out in a folder that does not exist")
def _c8zb(tmp: Path) -> Setup:
    run = copy_run(tmp)
    return Setup(["evaluate", "--run-dir", str(run), "--data", str(tmp / "shop.csv"),
                  "--out", str(tmp / "no" / "m.json")], needle="no")


@case(8, "predict: --run-dir is a file")
def _c8zc(tmp: Path) -> Setup:
    (tmp / "f").write_text("x")
    return Setup(["predict", "--run-dir", str(tmp / "f"), "--data", str(FIX["data"] /
                  "shop.csv"), "--out", str(tmp / "p.csv")])


# ---------------------------------------------------------------------------- class 9: CLI
def _help_gaps() -> list[str]:
    import argparse

    from manytask.cli.main import build_parser

    parser = build_parser()
    gaps = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in sub._actions:
                    if not a.help and not isinstance(a, argparse._HelpAction):
                        gaps.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    return gaps


@case(9, "every option of every command has a help text")
def _c9a(tmp: Path) -> Setup:
    return _api_case(lambda: _raise_if(_help_gaps(), "options without help"), expect="ok")


def _raise_if(items: list[str], what: str) -> None:
    if items:
        raise ValueError(f"{what}: {', '.join(items[:8])} ({len(items)} in all)")


@case(9, "manytask --version")
def _c9b(tmp: Path) -> Setup:
    return Setup(["--version"], expect="ok")


@case(9, "merge progress to a file: no carriage return, errors without a blank line")
def _c9c(tmp: Path) -> Setup:
    fam = copy_family(tmp)
    cfg = merge_yaml(tmp, fam)
    return Setup(["merge", str(cfg), str(tmp / "out")], expect="ok")


@case(9, "predict/evaluate/group --help list choices and defaults")
def _c9d(tmp: Path) -> Setup:
    def check() -> None:
        from manytask.cli.main import build_parser

        parser = build_parser()
        text = parser.format_help()
        missing = [c for c in ("predict", "evaluate") if c not in text]
        _raise_if(missing, "commands missing from --help")

    return _api_case(check, expect="ok")


# ---------------------------------------------------------------------------- runner
def run_case(c: Case, tmp: Path) -> Outcome:
    try:
        setup = c.build(tmp)
    except Exception as err:  # the probe's own setup failed: report, do not count
        return Outcome(c.name, c.cls, None, 0, False, False,
                       problem=f"setup failed: {type(err).__name__}: {err}")
    err_path = tmp / ".stderr"
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.setpgid(0, 0)
            if setup.before:
                setup.before()
            from manytask.cli import main as cli_main

            try:
                code = setup.call() if setup.call else cli_main(setup.argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    start = time.monotonic()
    hang = False
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > c.timeout:
            hang = True
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    code = None if hang else os.waitstatus_to_exitcode(status)
    err = err_path.read_text(errors="replace") if err_path.exists() else ""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(
        ("manytask merge: restored", "manytask merge: removed"))]
    # warnings of libraries and our notes are not the error line
    error_lines = [ln for ln in lines if "Warning" not in ln and "warn(" not in ln]
    tb = "Traceback" in err or "internal error" in err
    out = Outcome(c.name, c.cls, code, len(error_lines), tb, hang,
                  first_line=(error_lines[0] if error_lines else "")[:200])
    problems = []
    if hang:
        problems.append(f"hang (> {c.timeout:.0f} s)")
    elif tb:
        problems.append("traceback or internal error")
    elif setup.expect == "refuse":
        if code != 2:
            problems.append(f"exit {code}, expected a refusal (2)")
        elif len(error_lines) != 1:
            problems.append(f"{len(error_lines)} lines on stderr")
        elif setup.needle and setup.needle not in error_lines[0]:
            problems.append(f"message does not name {setup.needle!r}")
    elif code != 0:
        problems.append(f"exit {code}, expected success")
    if setup.check and not hang:
        try:
            found = setup.check()
        except Exception as err2:
            found = f"check failed: {err2}"
        if found:
            problems.append(found)
    if c.name.startswith("merge progress") and "\r" in err:
        problems.append("carriage return in progress written to a file")
    out.problem = "; ".join(problems) or None
    out.failed = bool(problems)
    return out


def bench_fixture(root: Path) -> None:
    from manytask.cli import main

    code = main(["bench", "--run-dir", str(root / "bench"), "--methods", "equal", "--seeds",
                 "0", "--data", "multidigits", "--train-size", "64", "--epochs", "1",
                 "--batch-size", "32", "--hidden", "8", "--no-single-task"])
    assert code == 0, "the bench fixture failed"
    FIX["bench"] = root / "bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run the cases whose name holds this (repeatable)")
    parser.add_argument("--json", help="write the outcomes here as JSON")
    args = parser.parse_args()
    os.environ.setdefault("MANYTASK_TRACEBACK", "")
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import manytask.cli.main
    import manytask.run  # noqa: F401

    root = Path(tempfile.mkdtemp(prefix="manytask-probe-"))
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
                io.StringIO()):
            fixtures(root / "fix")
            bench_fixture(root / "fix")
        outcomes = []
        for i, c in enumerate(CASES):
            if args.only and not any(o in c.name for o in args.only):
                continue
            tmp = root / f"case{i:03d}"
            tmp.mkdir()
            o = run_case(c, tmp)
            outcomes.append(o)
            mark = "FAIL" if o.failed else ("skip" if o.code is None and not o.hang else "ok  ")
            print(f"{mark} [{c.cls}] {c.name}: exit {o.code}"
                  f"{' - ' + o.problem if o.problem else ''} | {o.first_line[:150]}",
                  flush=True)
        print("\nclass  probed  failed")
        for cls in range(1, 10):
            mine = [o for o in outcomes if o.cls == cls]
            if mine:
                print(f"{cls:>5}  {len(mine):>6}  {sum(o.failed for o in mine):>6}")
        print(f"total  {len(outcomes):>6}  {sum(o.failed for o in outcomes):>6}")
        if args.json:
            Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

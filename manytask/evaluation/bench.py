"""``manytask bench``: a resumable grid of methods x architectures x seeds.

Each cell is one training run (:func:`manytask.run.train_from_config`) in its own subprocess,
so that its peak memory is its own (read from the child's resource usage) and a crash of one
cell does not take the grid down. A cell is finished when its ``result.json`` exists (written
atomically); a re-run skips finished cells. Single-task baselines (one run per task, equal
weighting) are added when Δm needs them; by default each runs as many optimizer steps as the
joint run (its epochs scaled by the ratio of batches per epoch), since a task trained alone on
mixed per-task batches would otherwise get K times fewer updates and inflate the gain.

Every cell's name and parameters are validated before the first cell runs
(:func:`validate_cells`). A cell's folder is named by its full configuration (a digest of
it), so a re-run with other flags never reuses a cell trained with the old ones. When any
cell fails, the grid still runs the others, then raises :class:`CellsFailedError` with a
summary (the command line exits non-zero).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, TrainConfig, config_from_mapping
from ..files import atomic_write_text, inside, load_json, load_yaml

RESULT = "result.json"
# A method or architecture name becomes part of a folder name: letters, digits, _ . - only.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Keys that differ per cell by design, or that do not change what a cell computes.
PER_CELL = ("balancer", "balancer_params", "arch", "seed", "run_dir", "resume", "progress")


class CellsFailedError(ValueError):
    """Some cells of a bench failed; the message names them and their logs (one line)."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``single_task`` names the task of a single-task baseline;
    ``epochs`` (baselines) overrides the grid's epochs so it runs as many steps as the joint
    run (:func:`baseline_epochs`)."""

    method: str
    arch: str
    seed: int
    single_task: str | None = None
    epochs: int | None = None

    @property
    def key(self) -> str:
        what = f"single-{self.single_task}" if self.single_task else self.method
        return f"{what}__{self.arch}__seed{self.seed}"


def grid(
    methods: Sequence[str],
    archs: Sequence[str],
    seeds: Sequence[int],
    tasks: Sequence[str],
    *,
    single_task: bool = True,
) -> list[Cell]:
    """The cells to run: baselines first (Δm needs them), then every method."""
    cells = []
    if single_task and len(tasks) > 1:
        cells += [Cell("equal", a, s, t) for a in archs for s in seeds for t in tasks]
    cells += [Cell(m, a, s) for m in methods for a in archs for s in seeds]
    return cells


def baseline_epochs(base: TrainConfig, tasks: Sequence[str]) -> dict[str, int]:
    """Epochs giving each single-task baseline the joint run's number of optimizer steps:
    ``round(epochs * batches_joint / batches_single)`` (at least 1). Prepares the data once
    per task to count its batches."""
    from ..run import DATASETS

    prepare = DATASETS.get(base.data).prepare
    joint = len(prepare(base).train)
    out = {}
    for task in tasks:
        single = len(prepare(dataclasses.replace(base, tasks=[task])).train)
        out[task] = max(1, round(base.epochs * joint / max(single, 1)))
    return out


def _cell_values(base: TrainConfig, cell: Cell) -> dict[str, Any]:
    values = dataclasses.asdict(base)
    values.update(balancer=cell.method, arch=cell.arch, seed=cell.seed, progress=False)
    if cell.method != base.balancer:
        values["balancer_params"] = {}
    if cell.single_task:
        values["tasks"] = [cell.single_task]
    if cell.epochs is not None:
        values["epochs"] = cell.epochs
    return values


def cell_dir(run_dir: Path, base: TrainConfig, cell: Cell) -> Path:
    """``run_dir/cells/KEY__DIGEST``: the digest is of everything the cell computes with, so
    the same cell under other settings (epochs, data, ...) gets another folder."""
    values = {k: v for k, v in _cell_values(base, cell).items()
              if k not in ("run_dir", "resume", "progress")}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode())
    return run_dir / "cells" / f"{cell.key}__{digest.hexdigest()[:10]}"


def cell_config(base: TrainConfig, cell: Cell, run_dir: Path) -> TrainConfig:
    values = _cell_values(base, cell)
    # an interrupted cell continues from its last epoch
    # an interrupted cell continues from its last epoch
    values.update(run_dir=str(cell_dir(run_dir, base, cell)), resume_if_exists=True)
    return config_from_mapping(values, source=f"cell {cell.key}")


def validate_cells(base: TrainConfig, cells: Sequence[Cell]) -> None:
    """Every name and parameter of every cell, checked before the first cell runs."""
    from ..balancers import build
    from ..balancers.registry import BALANCERS
    from ..models import ARCHITECTURES
    from ..registry import RegistryError
    from ..run import DATASETS

    if base.data not in DATASETS:
        raise ConfigError(f"bench: unknown data {base.data!r}; choose from {DATASETS.names()}")
    checked: set[str] = set()
    for cell in cells:
        for what, name in (("method", cell.method), ("architecture", cell.arch)):
            if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
                raise ConfigError(
                    f"bench: {what} name {name!r} may hold only letters, digits, '_', '.' "
                    "and '-' (it names the cell's folder)"
                )
        try:  # one-line errors with "did you mean", from the registries
            BALANCERS.entry(cell.method)
        except RegistryError as err:
            raise ConfigError(f"bench: method: {err}") from None
        try:
            ARCHITECTURES.entry(cell.arch)
        except RegistryError as err:
            raise ConfigError(f"bench: architecture: {err}") from None
        if cell.method not in checked:  # its parameters, by building it once
            params = base.balancer_params if cell.method == base.balancer else {}
            build(cell.method, params)
            checked.add(cell.method)
        cell_config(base, cell, Path("."))  # the whole cell configuration


def run_cell_here(config_path: Path) -> None:
    """Run one cell in this process and write its ``result.json`` (the subprocess entry)."""
    from ..run import train_from_config

    cfg = config_from_mapping(load_yaml(config_path, what="cell config"), source=str(config_path))
    began = time.perf_counter()
    results = train_from_config(cfg)
    trainer = results.pop("trainer")
    history = trainer.history
    steps = sum(h["steps"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    out = {
        "config": results["config"],
        "val": results["val"],
        "test": results["test"],
        "step_seconds": seconds / steps if steps else None,
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "wall_seconds": time.perf_counter() - began,
    }
    atomic_write_text(Path(cfg.run_dir or ".") / RESULT, json.dumps(out, indent=1))


def _run_subprocess(config_path: Path, log_path: Path) -> tuple[int, float]:
    """Run a cell in a child process; return its exit code and peak RSS in MiB."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "manytask.evaluation.bench", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def run_grid(
    base: TrainConfig,
    cells: Sequence[Cell],
    run_dir: Path,
    *,
    echo: Any = print,
    baseline_steps: str = "same",
) -> list[dict[str, Any]]:
    """Run every unfinished cell; return the results of all finished cells, in grid order.

    ``baseline_steps="same"``: single-task baselines run the joint run's number of optimizer
    steps (see :func:`baseline_epochs`); ``"epochs"``: the same number of epochs.
    Raises :class:`CellsFailedError` after the grid when any cell failed."""
    if baseline_steps not in ("same", "epochs"):
        raise ValueError(f"baseline_steps must be 'same' or 'epochs', got {baseline_steps!r}")
    validate_cells(base, cells)  # before the first cell: no baseline wasted on a typo
    singles = sorted({c.single_task for c in cells if c.single_task})
    epochs = baseline_epochs(base, singles) if singles and baseline_steps == "same" else {}
    cells = [dataclasses.replace(c, epochs=epochs[c.single_task])
             if c.single_task in epochs else c for c in cells]
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "base": dataclasses.asdict(base),
        "cells": [dataclasses.asdict(c) for c in cells],
        "cell_dirs": [cell_dir(run_dir, base, c).name for c in cells],
        "baseline_steps": baseline_steps,
        "baseline_epochs": epochs,
    }
    atomic_write_text(run_dir / "bench.yaml", yaml.safe_dump(spec, sort_keys=False))
    todo = [c for c in cells if not (cell_dir(run_dir, base, c) / RESULT).exists()]
    failed: list[str] = []
    echo(f"bench: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run")
    began = time.perf_counter()
    for i, cell in enumerate(todo):
        cfg = cell_config(base, cell, run_dir)
        folder = Path(str(cfg.run_dir))
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "cell.yaml"
        config_path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        code, peak_mib = _run_subprocess(config_path, folder / "log.txt")
        if code != 0 or not (folder / RESULT).is_file():
            echo(f"bench: cell {cell.key} failed (exit {code}); see {folder / 'log.txt'}")
            failed.append(f"{cell.key} (exit {code}; log {folder / 'log.txt'})")
            continue
        result = load_json(folder / RESULT, what="cell result")
        result["peak_rss_mib"] = peak_mib
        atomic_write_text(folder / RESULT, json.dumps(result, indent=1))
        done = i + 1
        elapsed = time.perf_counter() - began
        left = elapsed / done * (len(todo) - done)
        echo(
            f"bench: [{len(cells) - len(todo) + done}/{len(cells)}] {cell.key} "
            f"({result['wall_seconds']:.1f} s), about {left / 60:.1f} min left"
        )
    if failed:
        shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise CellsFailedError(
            f"{len(failed)} of {len(cells)} cells failed: {shown}; finished cells are kept, "
            "a re-run retries the failed ones"
        )
    return load_results(run_dir, cells, base, allow_outside_links=base.allow_outside_links)


def read_spec(run_dir: Path) -> dict[str, Any]:
    """The ``bench.yaml`` of a run folder (bounded loader), checked for its keys."""
    spec = load_yaml(run_dir / "bench.yaml", what="bench spec")
    if not isinstance(spec, dict) or not {"base", "cells"} <= set(spec):
        raise ValueError(f"{run_dir / 'bench.yaml'}: not a bench spec (base and cells)")
    return spec


def load_results(
    run_dir: Path, cells: Sequence[Cell] | None = None, base: TrainConfig | None = None,
    *, allow_outside_links: bool = False,
) -> list[dict[str, Any]]:
    """Finished cells' results, each with its ``cell`` fields added. A cell folder or result
    linking out of ``run_dir`` is refused unless ``allow_outside_links``; a result holding a
    non-finite number is refused (it would print as a NaN table at exit 0)."""
    if cells is None or base is None:
        spec = read_spec(run_dir)
        try:
            cells = [Cell(**c) for c in spec["cells"]]
            base = config_from_mapping(spec["base"], source=str(run_dir / "bench.yaml"))
        except TypeError as err:
            raise ValueError(f"{run_dir / 'bench.yaml'}: malformed cells: {err}") from None
    out = []
    for cell in cells:
        path = cell_dir(run_dir, base, cell) / RESULT
        if path.exists() or path.is_symlink():
            inside(run_dir, path.relative_to(run_dir), what="cell result",
                   allow_outside=allow_outside_links)
            result = load_json(path, what="cell result")
            _check_finite_numbers(result, str(path))
            result["cell"] = dataclasses.asdict(cell)
            result["cell_dir"] = str(path.parent)
            out.append(result)
    return out


def _check_finite_numbers(value: Any, where: str, key: str = "") -> None:
    """Every number in ``value`` (a parsed result) finite; else a one-line error naming it."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {key or 'a value'} is {value}; a cell's results must be "
                         "finite (re-run the cell: delete its folder)")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite_numbers(v, where, f"{key}/{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite_numbers(v, where, f"{key}[{i}]")


if __name__ == "__main__":  # the per-cell subprocess
    run_cell_here(Path(sys.argv[1]))

"""``manytask bench``: a resumable grid of methods x architectures x seeds.

Each cell is one training run (:func:`manytask.run.train_from_config`) in its own subprocess,
so that its peak memory is its own (read from the child's resource usage) and a crash of one
cell does not take the grid down. A cell is finished when its ``result.json`` exists (written
atomically); a re-run skips finished cells. Single-task baselines (one run per task, equal
weighting) are added when Δm needs them; by default each runs as many optimizer steps as the
joint run (its epochs scaled by the ratio of batches per epoch), since a task trained alone on
mixed per-task batches would otherwise get K times fewer updates and inflate the gain.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import TrainConfig, config_from_mapping
from ..training.checkpoint import atomic_write_text

RESULT = "result.json"


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``single_task`` names the task of a single-task baseline."""

    method: str
    arch: str
    seed: int
    single_task: str | None = None

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

    joint = len(DATASETS[base.data](base).train)
    out = {}
    for task in tasks:
        single = len(DATASETS[base.data](dataclasses.replace(base, tasks=[task])).train)
        out[task] = max(1, round(base.epochs * joint / max(single, 1)))
    return out


def cell_config(base: TrainConfig, cell: Cell, run_dir: Path,
                epochs: int | None = None) -> TrainConfig:
    values = dataclasses.asdict(base)
    values.update(
        balancer=cell.method,
        arch=cell.arch,
        seed=cell.seed,
        run_dir=str(run_dir / "cells" / cell.key),
        resume=True,  # an interrupted cell continues from its last epoch
        progress=False,
    )
    if cell.method != base.balancer:
        values["balancer_params"] = {}
    if cell.single_task:
        values["tasks"] = [cell.single_task]
        if epochs is not None:
            values["epochs"] = epochs
    return config_from_mapping(values, source=f"cell {cell.key}")


def run_cell_here(config_path: Path) -> None:
    """Run one cell in this process and write its ``result.json`` (the subprocess entry)."""
    from ..run import train_from_config

    cfg = config_from_mapping(yaml.safe_load(config_path.read_text()), source=str(config_path))
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
    """
    if baseline_steps not in ("same", "epochs"):
        raise ValueError(f"baseline_steps must be 'same' or 'epochs', got {baseline_steps!r}")
    singles = sorted({c.single_task for c in cells if c.single_task})
    epochs = baseline_epochs(base, singles) if singles and baseline_steps == "same" else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench.yaml").write_text(
        yaml.safe_dump(
            {"base": dataclasses.asdict(base), "cells": [dataclasses.asdict(c) for c in cells],
             "baseline_steps": baseline_steps, "baseline_epochs": epochs},
            sort_keys=False,
        )
    )
    todo = [c for c in cells if not (run_dir / "cells" / c.key / RESULT).exists()]
    echo(f"bench: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run")
    began = time.perf_counter()
    for i, cell in enumerate(todo):
        cfg = cell_config(base, cell, run_dir,
                          epochs.get(cell.single_task) if cell.single_task else None)
        cell_dir = Path(str(cfg.run_dir))
        cell_dir.mkdir(parents=True, exist_ok=True)
        config_path = cell_dir / "cell.yaml"
        config_path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        code, peak_mib = _run_subprocess(config_path, cell_dir / "log.txt")
        if code != 0:
            echo(f"bench: cell {cell.key} failed (exit {code}); see {cell_dir / 'log.txt'}")
            continue
        result = json.loads((cell_dir / RESULT).read_text())
        result["peak_rss_mib"] = peak_mib
        atomic_write_text(cell_dir / RESULT, json.dumps(result, indent=1))
        done = i + 1
        elapsed = time.perf_counter() - began
        left = elapsed / done * (len(todo) - done)
        echo(
            f"bench: [{len(cells) - len(todo) + done}/{len(cells)}] {cell.key} "
            f"({result['wall_seconds']:.1f} s), about {left / 60:.1f} min left"
        )
    return load_results(run_dir, cells)


def load_results(run_dir: Path, cells: Sequence[Cell] | None = None) -> list[dict[str, Any]]:
    """Finished cells' results, each with its ``cell`` fields added."""
    if cells is None:
        spec = yaml.safe_load((run_dir / "bench.yaml").read_text())
        cells = [Cell(**c) for c in spec["cells"]]
    out = []
    for cell in cells:
        path = run_dir / "cells" / cell.key / RESULT
        if path.exists():
            result = json.loads(path.read_text())
            result["cell"] = dataclasses.asdict(cell)
            result["cell_dir"] = str(path.parent)
            out.append(result)
    return out


if __name__ == "__main__":  # the per-cell subprocess
    run_cell_here(Path(sys.argv[1]))

"""Which bench runs one report may hold: the same tasks, and the same settings unless the
user names those that may differ (``manytask report --compare SETTING...``).

A table or a Δm over runs of other data, epochs or learning rates would compare methods
under different conditions and present it as one experiment; over other task sets it would
not even be defined (a raw ``KeyError`` in the summary). Both are refused before anything
is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..registry import short
from .bench import PER_CELL, read_spec


def settings_of(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Each run folder's shared settings (its ``bench.yaml`` base, less the per-cell keys)."""
    out = []
    for run_dir in run_dirs:
        if not (run_dir / "bench.yaml").exists():
            raise FileNotFoundError(f"{run_dir} is not a bench run directory (no bench.yaml)")
        base = read_spec(run_dir)["base"]
        if not isinstance(base, dict):
            raise ValueError(f"{run_dir / 'bench.yaml'}: 'base' is not a mapping")
        out.append({k: v for k, v in base.items() if k not in PER_CELL})
    return out


def _task_set(results: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(
        task for r in results if not r["cell"]["single_task"] for task in r.get("test", {})
    )


def check_comparable(
    run_dirs: Sequence[Path],
    settings: Sequence[Mapping[str, Any]],
    per_run: Sequence[Sequence[Mapping[str, Any]]],
    compare: Sequence[str],
) -> list[str]:
    """The settings that differ between the runs; a ``ValueError`` when the runs hold other
    task sets (no table can hold both), or differ in a setting not named in ``compare``."""
    tasks = {_task_set(results) for results in per_run if results}
    if len(tasks) > 1:
        shown = " vs ".join(sorted(str(sorted(t)) for t in tasks))
        raise ValueError(
            f"report: the runs hold different task sets ({short(shown, 200)}); a Δm or a "
            "table over them means nothing: report them separately"
        )
    keys = sorted({k for s in settings for k in s})
    differ = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
    unasked = [k for k in differ if k not in compare]
    if unasked:
        values = "; ".join(
            f"{k}: " + " vs ".join(short(s.get(k), 40) for s in settings) for k in unasked[:3]
        )
        raise ValueError(
            f"report: {', '.join(map(str, run_dirs))} differ in {', '.join(unasked)} "
            f"({values}); pass --compare {' '.join(unasked)} to compare them side by side"
        )
    return differ

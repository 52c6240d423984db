"""Tables from a bench run: per-task metrics, Δm, rank and cost, mean ± std over seeds."""

from __future__ import annotations

import csv
import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import METRICS
from .measures import delta_m, mean_rank, pareto_front


def higher_is_better(metric: str) -> bool:
    """The direction of a metric by name (:data:`manytask.metrics.METRICS`); the loss and any
    unknown name: lower is better."""
    return metric in METRICS and METRICS.get(metric).higher_is_better


@dataclass
class Row:
    """One method on one architecture, aggregated over its seeds."""

    method: str
    arch: str
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task/metric/seeds
    delta_m: list[float] = field(default_factory=list)
    step_ratio: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    rank: float = math.nan
    pareto: bool = False
    within_noise_of_best: bool = False

    def mean(self, task: str, metric: str) -> float:
        return float(np.mean(self.metrics[task][metric]))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def directions_for(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    dirs: dict[str, dict[str, bool]] = defaultdict(dict)
    for r in results:
        for task, metrics in r["test"].items():
            for metric in metrics:
                dirs[task][metric] = higher_is_better(metric)
    return dict(dirs)


def summarise(results: Sequence[Mapping[str, Any]], main_metric: str | None = None) -> list[Row]:
    """Aggregate finished cells into rows; Δm against the same-arch, same-seed baselines."""
    dirs = directions_for(results)
    baselines: dict[tuple[str, int], dict[str, dict[str, float]]] = defaultdict(dict)
    equal_step: dict[tuple[str, int], float] = {}
    for r in results:
        cell = r["cell"]
        if cell["single_task"]:
            baselines[(cell["arch"], cell["seed"])][cell["single_task"]] = r["test"][
                cell["single_task"]
            ]
        elif cell["method"] == "equal" and r.get("step_seconds"):
            equal_step[(cell["arch"], cell["seed"])] = r["step_seconds"]
    rows: dict[tuple[str, str], Row] = {}
    for r in results:
        cell = r["cell"]
        if cell["single_task"]:
            continue
        row = rows.setdefault((cell["method"], cell["arch"]), Row(cell["method"], cell["arch"]))
        row.seeds.append(cell["seed"])
        for task, metrics in r["test"].items():
            for metric, value in metrics.items():
                row.metrics.setdefault(task, {}).setdefault(metric, []).append(value)
        base = baselines.get((cell["arch"], cell["seed"]), {})
        if base and set(base) >= set(r["test"]):
            row.delta_m.append(delta_m(r["test"], base, dirs))
        eq = equal_step.get((cell["arch"], cell["seed"]))
        if eq and r.get("step_seconds"):
            row.step_ratio.append(r["step_seconds"] / eq)
        if r.get("peak_rss_mib"):
            row.peak_mib.append(r["peak_rss_mib"])
    out = list(rows.values())
    if not out:
        return out
    scores = {
        f"{row.method}/{row.arch}": {
            t: {m: row.mean(t, m) for m in ms} for t, ms in row.metrics.items()
        }
        for row in out
    }
    for row, rank in zip(out, mean_rank(scores, dirs).values(), strict=True):
        row.rank = rank
    tasks = sorted(dirs)
    metric_of = {t: _main_metric(dirs[t], main_metric) for t in tasks}
    points = [[row.mean(t, metric_of[t]) for t in tasks] for row in out]
    for row, on_front in zip(
        out, pareto_front(points, [dirs[t][metric_of[t]] for t in tasks]), strict=True
    ):
        row.pareto = bool(on_front)
    _mark_noise(out)
    return out


def _main_metric(metrics: Mapping[str, bool], preferred: str | None) -> str:
    if preferred and preferred in metrics:
        return preferred
    # AUC first: binary tasks are often imbalanced
    for name in ("auc", "auroc", "accuracy", "mse", "mae"):
        if name in metrics:
            return name
    return next(iter(metrics))


def _mark_noise(rows: list[Row]) -> None:
    """Flag rows whose Δm is within one standard error of the best row's (a two-sided rule)."""
    scored = [r for r in rows if r.delta_m]
    if not scored:
        return
    best = max(scored, key=lambda r: float(np.mean(r.delta_m)))
    b_mean, b_std = _mean_std(best.delta_m)
    for row in scored:
        mean, std = _mean_std(row.delta_m)
        se = math.sqrt(b_std**2 / len(best.delta_m) + std**2 / len(row.delta_m))
        row.within_noise_of_best = row is best or (b_mean - mean) <= se


def markdown(rows: Sequence[Row], main_metric: str | None = None) -> str:
    """A Markdown table: main metric per task, Δm, rank, Pareto, step-time ratio, peak memory."""
    if not rows:
        return "(no finished cell)\n"
    tasks = sorted(rows[0].metrics)
    metric_of = {t: _main_metric({m: True for m in rows[0].metrics[t]}, main_metric) for t in tasks}
    header = [
        "method",
        "arch",
        "seeds",
        *[f"{t} {metric_of[t]}" for t in tasks],
        "Δm % (vs single-task)",
        "mean rank",
        "Pareto",
        "time/step vs equal",
        "peak RSS MiB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: r.rank):
        cells = [row.method, row.arch, str(len(row.seeds))]
        for t in tasks:
            m, s = _mean_std(row.metrics[t][metric_of[t]])
            cells.append(f"{m:.4f} ± {s:.4f}")
        dm, ds = _mean_std(row.delta_m)
        note = (
            ""
            if not row.delta_m
            else (" (≈ best, within noise)" if row.within_noise_of_best else "")
        )
        cells.append("-" if not row.delta_m else f"{dm:+.2f} ± {ds:.2f}{note}")
        cells.append(f"{row.rank:.2f}")
        cells.append("yes" if row.pareto else "")
        tm, _ = _mean_std(row.step_ratio)
        cells.append("-" if not row.step_ratio else f"{tm:.2f}x")
        pm, _ = _mean_std(row.peak_mib)
        cells.append("-" if not row.peak_mib else f"{pm:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(run_dir: Path, results: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Write ``results.csv`` (one row per cell, task and metric) and ``summary.md``."""
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "method",
                "arch",
                "seed",
                "single_task",
                "task",
                "metric",
                "value",
                "step_seconds",
                "peak_rss_mib",
            ]
        )
        for r in results:
            c = r["cell"]
            for task, metrics in r["test"].items():
                for metric, value in metrics.items():
                    writer.writerow(
                        [
                            c["method"],
                            c["arch"],
                            c["seed"],
                            c["single_task"] or "",
                            task,
                            metric,
                            value,
                            r.get("step_seconds"),
                            r.get("peak_rss_mib"),
                        ]
                    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = summarise(results)
    notes = sorted({str(w.message) for w in caught if "near zero" in str(w.message)})
    for note in notes:
        warnings.warn(note, stacklevel=2)
    (run_dir / "summary.md").write_text(markdown(rows) + steps_note(results)
                                        + "".join(f"\nWarning: {n}\n" for n in notes))
    return rows


def steps_note(results: Sequence[Mapping[str, Any]]) -> str:
    """One line saying how many optimizer steps the baselines and the joint runs took."""
    single = [r.get("steps") for r in results if r["cell"]["single_task"]]
    joint = [r.get("steps") for r in results if not r["cell"]["single_task"]]
    single_n = sorted({s for s in single if s is not None})
    joint_n = sorted({s for s in joint if s is not None})
    if not single_n or not joint_n:
        return ""
    same = single_n == joint_n
    return (f"\nSingle-task baselines: {', '.join(map(str, single_n))} optimizer steps; joint "
            f"runs: {', '.join(map(str, joint_n))}"
            + (" (the same number)." if same else " (Δm compares unequal training budgets).")
            + "\n")

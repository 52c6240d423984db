"""``manytask report RUN`` on one training run (not a bench): curves, per-epoch validation
metrics and the best validation epoch.

The best epoch is chosen by the mean over tasks of each task's main metric, min-max
normalised over the epochs and oriented by its direction (1 = that task's best epoch, 0 = its
worst), so that metrics of different scales (accuracy, RMSE) weigh the same.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..files import load_json
from ..metrics import METRICS
from .report import check_out, mark_out, plot_curves, plot_weights, write_html


def _higher(metric: str) -> bool:
    return metric in METRICS and METRICS.get(metric).higher_is_better


def main_metrics(run_dir: Path, seen: dict[str, set[str]]) -> dict[str, str]:
    """Each task's main metric: the first it declares (preprocessing.json), else the first
    non-loss metric logged, else the loss."""
    declared: dict[str, str] = {}
    pre = run_dir / "preprocessing.json"
    if pre.exists():
        try:  # bounded, a regular file (else a pipe blocks, deep nesting overflows)
            for t in load_json(pre, what="preprocessing").get("tasks", []):
                if t.get("metrics"):
                    declared[t["name"]] = t["metrics"][0]
        except (AttributeError, TypeError, KeyError, IndexError):
            declared = {}
    out: dict[str, str] = {}
    for task, names in seen.items():
        others = sorted(n for n in names if n != "loss")
        chosen = declared.get(task)
        out[task] = chosen if chosen in names else (others[0] if others else "loss")
    return out


def best_epoch(values: dict[str, dict[int, float]], main: dict[str, str]) -> tuple[int, dict[
        int, float]]:
    """The epoch with the highest mean normalised main metric, and every epoch's score."""
    epochs = sorted({e for per in values.values() for e in per})
    scores = np.zeros(len(epochs))
    for task, per in values.items():
        v = np.array([per.get(e, math.nan) for e in epochs], dtype=float)
        if not _higher(main[task]):
            v = -v
        lo, hi = np.nanmin(v), np.nanmax(v)
        scores += np.nan_to_num((v - lo) / (hi - lo) if hi > lo else np.ones_like(v))
    scores /= max(len(values), 1)
    score_of = {e: float(s) for e, s in zip(epochs, scores, strict=True)}
    return epochs[int(np.argmax(scores))], score_of


def run_report(run_dir: Path, out: Path | None = None, *,
               overwrite: bool = False) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    if out is not None:
        check_out(out, overwrite)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    if not rows:
        raise ValueError(f"{run_dir}/metrics.csv holds no validation metric")
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        seen[r["task"]].add(r["metric"])
    main = main_metrics(run_dir, seen)
    values: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["metric"] == main[r["task"]]:
            values[r["task"]][int(r["epoch"])] = float(r["value"])
    best, scores = best_epoch(values, main)
    tasks = sorted(values)
    lines = ["| epoch | " + " | ".join(f"{t} {main[t]}" for t in tasks) + " | score |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for e in sorted(scores):
        mark = " (best)" if e == best else ""
        cells = [f"{values[t].get(e, math.nan):.4f}" for t in tasks]
        lines.append(f"| {e + 1}{mark} | " + " | ".join(cells) + f" | {scores[e]:.3f} |")
    table = "\n".join(lines) + "\n"
    out = out or run_dir
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.md"
    summary.write_text(f"# {run_dir}\n\nValidation main metrics per epoch; best epoch "
                       f"{best + 1} (mean of min-max normalised main metrics).\n\n{table}")
    made: dict[str, Path] = {}
    for name, path in (("curves", plot_curves({"run": run_dir}, out)),
                       ("weights", plot_weights({"run": run_dir}, out))):
        if path is not None:
            made[name] = path
    made["html"] = write_html(out, f"manytask report: {run_dir}", table, list(made.values()))
    made["summary"] = summary
    if out != run_dir:
        mark_out(out, made)
    return made

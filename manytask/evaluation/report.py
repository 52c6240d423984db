"""``manytask report RUN_DIR...``: PNG plots and one self-contained HTML page.

Plots: per-task training loss and validation metric curves, balancer weights over time, the
heatmap of gradient cosine similarity between tasks, the Pareto scatter of methods (2 or 3
tasks) and Δm with its spread. The HTML embeds every image (base64) and the tables, and
references no external resource.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import UnsafeFileError, atomic_write_text, load_json, regular_file
from ..registry import short
from .bench import load_results
from .compare import check_comparable, settings_of
from .summary import Row, _main_metric, directions_for, markdown, write_tables


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    regular_file(path, what="run log")  # a pipe would block the report forever
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# What a report writes into its folder; an explicit --out holding one of these that no
# report wrote (its marker lists what one did) is refused unless overwrite.
REPORT_FILES = ("results.csv", "summary.md", "report.html", "curves.png", "weights.png",
                "cosine.png", "pareto.png", "delta_m.png")
REPORT_MARKER = "manytask_report.json"


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before anything is read, an explicit output folder where the report would
    replace files of the user's (same names, not listed by a previous report's marker)."""
    if overwrite or not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    ours: set[str] = set()
    if (out / REPORT_MARKER).exists():
        try:
            listed = load_json(out / REPORT_MARKER, what="report marker").get("files", [])
            ours = {f for f in listed if isinstance(f, str)}
        except (UnsafeFileError, AttributeError):
            ours = set()
    clash = [n for n in REPORT_FILES if (out / n).exists() and n not in ours]
    if clash:
        raise ValueError(f"--out {str(out)!r} holds {', '.join(clash[:3])}, which no report "
                         "wrote; choose a new or empty folder, or pass --overwrite")


def mark_out(out: Path, made: Mapping[str, Path]) -> None:
    """Record what the report wrote into an explicit output folder (see :func:`check_out`)."""
    files = sorted({p.name for p in made.values()} | (
        {"results.csv"} if (out / "results.csv").exists() else set()))
    atomic_write_text(out / REPORT_MARKER, json.dumps({"written_by": "manytask report",
                                                       "files": files}))


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _first_seed_runs(results: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """One run directory per multi-task method (its lowest seed), for the curve plots."""
    best: dict[str, tuple[int, Path]] = {}
    for r in results:
        c = r["cell"]
        if c["single_task"]:
            continue
        label = f"{c['method']}/{c['arch']}"
        if label not in best or c["seed"] < best[label][0]:
            best[label] = (c["seed"], Path(r["cell_dir"]))
    return {label: path for label, (_, path) in sorted(best.items())}


def _smooth(values: np.ndarray) -> np.ndarray:
    """A moving average over about 1/25 of the series (none for short series)."""
    ok = ~np.isnan(values)
    window = int(ok.sum()) // 25
    if window < 2:
        return values
    kernel = np.ones(window) / window
    out = np.full_like(values, np.nan)
    filled = np.where(ok, values, 0.0)
    counts = np.convolve(ok.astype(float), kernel, mode="same")
    out[ok] = (np.convolve(filled, kernel, mode="same") / np.maximum(counts, 1e-12))[ok]
    return out


def plot_curves(runs: Mapping[str, Path], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    data = {
        label: (_read_csv(p / "steps.csv"), _read_csv(p / "metrics.csv"))
        for label, p in runs.items()
    }
    tasks = sorted(
        {
            k[5:]
            for steps, _ in data.values()
            for k in (steps[0] if steps else {})
            if k.startswith("loss/")
        }
    )
    if not tasks:
        return None
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.5), squeeze=False)
    for label, (steps, metrics) in data.items():
        for j, task in enumerate(tasks):
            x = np.array([_float(r["step"]) for r in steps])
            y = np.array([_float(r.get(f"loss/{task}")) for r in steps])
            axes[0, j].plot(x, _smooth(y), label=label, lw=1.2, marker="." if len(x) < 30 else None)
            val = [r for r in metrics if r["task"] == task and r["split"] == "val"]
            names = {r["metric"] for r in val}
            if names:
                metric = _main_metric(
                    {n: True for n in names if n != "loss"} or {"loss": True}, None
                )
                pts = [
                    (int(_float(r["epoch"])) + 1, _float(r["value"]))
                    for r in val
                    if r["metric"] == metric
                ]
                if pts:
                    ex, ey = zip(*pts, strict=True)
                    axes[1, j].plot(ex, ey, marker="o", ms=3, label=label)
                    axes[1, j].set_ylabel(f"validation {metric}")
            axes[0, j].set_title(task)
            axes[0, j].set_xlabel("step")
            axes[0, j].set_ylabel("training loss (smoothed)")
            axes[0, j].set_yscale("log")
            axes[1, j].set_xlabel("epoch")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(runs: Mapping[str, Path], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    series = {label: _read_csv(p / "steps.csv") for label, p in runs.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    n = len(series)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, steps) in zip(axes.flat, series.items(), strict=False):
        x = np.array([_float(r["step"]) for r in steps])
        for key in steps[0]:
            if key.startswith("weight/"):
                y = _smooth(np.array([_float(r[key]) for r in steps]))
                ax.plot(x, y, label=key[7:], marker="." if len(x) < 30 else None)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("task weight")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "weights.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cosine_matrix(steps: Sequence[Mapping[str, str]]) -> tuple[list[str], np.ndarray] | None:
    """Mean pairwise gradient cosine over the logged steps, as a K x K matrix."""
    pairs = [k for k in (steps[0] if steps else {}) if k.startswith("cos/")]
    if not pairs:
        return None
    tasks = sorted({t for k in pairs for t in k.split("/")[1:]})
    mat = np.eye(len(tasks))
    for key in pairs:
        _, a, b = key.split("/")
        values = np.array([_float(r[key]) for r in steps])
        if np.all(np.isnan(values)):
            return None
        i, j = tasks.index(a), tasks.index(b)
        mat[i, j] = mat[j, i] = float(np.nanmean(values))
    return tasks, mat


def plot_cosine(runs: Mapping[str, Path], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    mats = {}
    for label, p in runs.items():
        found = cosine_matrix(_read_csv(p / "steps.csv"))
        if found is not None:
            mats[label] = found
    if not mats:
        return None
    n = len(mats)
    cols = min(n, 4)  # a grid, so that nine methods do not make one unreadable strip
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols + 0.8, 3.4 * rows), squeeze=False
    )
    images = []
    for ax, (label, (tasks, mat)) in zip(axes.flat, mats.items(), strict=False):
        images.append(ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu"))
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                color = "white" if abs(mat[i, j]) > 0.5 else "black"
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(images[0], ax=list(axes.flat), label="mean gradient cosine", shrink=0.8)
    path = out / "cosine.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_pareto(
    rows: Sequence[Row], dirs: Mapping[str, Mapping[str, bool]], out: Path
) -> Path | None:
    import matplotlib.pyplot as plt

    tasks = sorted(rows[0].metrics) if rows else []
    if len(tasks) not in (2, 3):
        return None
    metric_of = {t: _main_metric(dirs[t], None) for t in tasks}
    pairs = [(0, 1)] if len(tasks) == 2 else [(0, 1), (0, 2), (1, 2)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 4), squeeze=False)
    for ax, (a, b) in zip(axes.flat, pairs, strict=True):
        ta, tb = tasks[a], tasks[b]
        for row in rows:
            xs, ys = row.metrics[ta][metric_of[ta]], row.metrics[tb][metric_of[tb]]
            ax.errorbar(
                np.mean(xs),
                np.mean(ys),
                xerr=np.std(xs),
                yerr=np.std(ys),
                marker="*" if row.pareto else "o",
                ms=10 if row.pareto else 6,
                capsize=2,
                label=f"{row.method}/{row.arch}",
            )
        ax.set_xlabel(f"{ta} {metric_of[ta]}")
        ax.set_ylabel(f"{tb} {metric_of[tb]}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("methods (mean ± std over seeds); ★ = on the Pareto front", fontsize=10)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_delta_m(rows: Sequence[Row], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    scored = sorted((r for r in rows if r.delta_m), key=lambda r: float(np.mean(r.delta_m)))
    if not scored:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(scored) + 1.4))
    means = [float(np.mean(r.delta_m)) for r in scored]
    stds = [float(np.std(r.delta_m, ddof=1)) if len(r.delta_m) > 1 else 0.0 for r in scored]
    colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
    ax.barh([f"{r.method}/{r.arch}" for r in scored], means, xerr=stds, color=colors, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δm % over single-task baselines\n(mean ± std over seeds; higher is better)")
    fig.tight_layout()
    path = out / "delta_m.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown_table_to_html(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return f"<p>{html.escape(text)}</p>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[2:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(out: Path, title: str, table_md: str, images: Sequence[Path]) -> Path:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;",
        "padding:3px 7px;text-align:right}th{background:#f3f3f3}img{max-width:100%}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _markdown_table_to_html(table_md),
    ]
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(image.stem)}</h2>")
        parts.append(f"<img alt='{html.escape(image.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def report(
    run_dirs: Sequence[Path], out: Path | None = None, compare: Sequence[str] = (), *,
    overwrite: bool = False, allow_outside_links: bool = False,
) -> dict[str, Path]:
    """Write the tables, plots and ``report.html`` of one or more bench run directories.

    Runs of different settings (data, epochs, ...) are refused unless ``compare`` names
    every setting that differs; their rows are then labelled with those settings (and each
    method compared with its own run's baselines). Runs of different task sets are refused.
    An explicit ``out`` holding files of the report's names that no report wrote is refused
    unless ``overwrite``; cell folders linking out of a run are refused unless
    ``allow_outside_links``.
    """
    import matplotlib

    if out is not None:
        check_out(out, overwrite)
    matplotlib.use("Agg")
    settings = settings_of(run_dirs)
    per_run = [load_results(run_dir, allow_outside_links=allow_outside_links)
               for run_dir in run_dirs]
    differ = check_comparable(run_dirs, settings, per_run, compare)
    results: list[dict[str, Any]] = []
    for setting, run_results in zip(settings, per_run, strict=True):
        if differ:  # the arch label carries the setting: rows and baselines stay apart
            tag = ", ".join(f"{k}={short(setting.get(k), 30)}" for k in differ)
            for r in run_results:
                r["cell"]["arch"] = f"{r['cell']['arch']} [{tag}]"
        results += run_results
    if not results:
        raise ValueError(f"no finished cell in {', '.join(map(str, run_dirs))}")
    out = out or run_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    rows = write_tables(out, results)  # results.csv and summary.md
    table = markdown(rows)
    dirs = directions_for(results)
    runs = _first_seed_runs(results)
    made: dict[str, Path] = {}
    for name, path in (
        ("curves", plot_curves(runs, out)),
        ("weights", plot_weights(runs, out)),
        ("cosine", plot_cosine(runs, out)),
        ("pareto", plot_pareto(rows, dirs, out)),
        ("delta_m", plot_delta_m(rows, out)),
    ):
        if path is not None:
            made[name] = path
    title = "manytask report: " + ", ".join(str(d) for d in run_dirs)
    made["html"] = write_html(out, title, table, list(made.values()))
    made["summary"] = out / "summary.md"
    if out not in run_dirs:
        mark_out(out, made)
    return made

"""Task correlation vs architecture, on the MMoE paper's synthetic data (Ma et al., 2018).

For each correlation ``p`` and seed, one data set is drawn with
:func:`manytask.data.synthetic.mmoe_synthetic` (d = 100, c = 1, m = 10, noise variance 0.01),
split 8,000 / 2,000 / 2,000 (train / validation / test); each label is standardised with the
training mean and standard deviation so that both tasks count alike. Every architecture is
trained from the same seed with Adam (lr 3e-3, batch 256, 30 epochs) under equal weighting;
the reported figure is the test loss (sum of both tasks' MSE, in standardised units) at the
epoch with the lowest validation loss. Mean and standard deviation over seeds, per
architecture and ``p``. The synthetic data is described in Section 3.2 of the paper and its
experiments in Section 5.

Sizes follow the paper's spirit of comparable capacity: 8 experts of 16 units for the mixtures
(shared-bottom: one 128-unit layer), towers of 8 units.

The paper's finding to check: MMoE's advantage over shared-bottom grows as ``p`` falls.

Usage::

    python benchmarks/synthetic_mmoe.py --out synthetic.md --plot synthetic.png   # full: 90 runs
    python benchmarks/synthetic_mmoe.py --seeds 1 --epochs 2 --n-train 1000      # smoke run
    # two processes (one per core), then one table and plot:
    python benchmarks/synthetic_mmoe.py --correlations 0.5 --save a.json &
    python benchmarks/synthetic_mmoe.py --correlations 0.9 1.0 --save b.json
    python benchmarks/synthetic_mmoe.py --merge a.json b.json --out syn.md --plot syn.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

import manytask
from manytask.data.synthetic import mmoe_synthetic
from manytask.data.tabular import TabularDataset
from manytask.models import make_model

SIZES: dict[str, dict[str, Any]] = {
    "shared_bottom": {"hidden": (128,), "tower_hidden": (8,)},
    "omoe": {"n_experts": 8, "expert_hidden": (16,), "tower_hidden": (8,)},
    "mmoe": {"n_experts": 8, "expert_hidden": (16,), "tower_hidden": (8,)},
    "cgc": {"n_task_experts": 3, "n_shared_experts": 2, "expert_hidden": (16,),
            "tower_hidden": (8,)},
    "ple": {"n_levels": 2, "n_task_experts": 2, "n_shared_experts": 2, "expert_hidden": (16,),
            "tower_hidden": (8,)},
    "adatt": {"n_levels": 2, "n_task_experts": 3, "n_shared_experts": 2, "expert_hidden": (16,),
              "tower_hidden": (8,)},
}  # fmt: skip


def standardise(train: TabularDataset, *others: TabularDataset) -> None:
    for task in list(train.targets):
        mean, std = train.targets[task].mean(), train.targets[task].std()
        for d in (train, *others):
            d.targets[task] = (d.targets[task] - mean) / std


def loss_on(model: torch.nn.Module, data: TabularDataset, tasks: Sequence[manytask.Task]) -> float:
    model.eval()
    with torch.no_grad():
        outputs = model(data.dense)
        total = sum(float(v) for v in manytask.task_losses(tasks, outputs, data.targets).values())
    model.train()
    return total


def run(arch: str, p: float, seed: int, args: argparse.Namespace) -> float:
    n = args.n_train + 2 * args.n_eval
    synth = mmoe_synthetic(n, p, seed=seed)
    full = synth.dataset()
    fractions = [args.n_train / n, args.n_eval / n, args.n_eval / n]
    train, val, test = full.split(fractions, seed=seed)
    standardise(train, val, test)
    tasks = list(synth.tasks)
    torch.manual_seed(seed)
    model = make_model(arch, tasks, in_features=full.dense.shape[1], **SIZES[arch])
    balancer = manytask.make_balancer("equal")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    best_val, test_at_best = float("inf"), float("nan")
    for _ in range(args.epochs):
        for batch in train.batches(args.batch, generator=gen):
            outputs = model(batch.x.dense)
            losses = manytask.task_losses(tasks, outputs, batch.targets)
            opt.zero_grad()
            manytask.backward(losses, balancer)
            opt.step()
        val_loss = loss_on(model, val, tasks)
        if val_loss < best_val:
            best_val, test_at_best = val_loss, loss_on(model, test, tasks)
    return test_at_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--correlations", nargs="+", type=float, default=[0.5, 0.9, 1.0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=8_000)
    parser.add_argument("--n-eval", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", help="write the per-seed test losses here (JSON)")
    parser.add_argument("--merge", nargs="+", help="skip training: tabulate these --save files")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[tuple[str, float], list[float]] = {}
    if args.merge:  # tables and plot from runs saved by --save (e.g. one process per p)
        for path in args.merge:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            for row in saved["runs"]:
                results[row["arch"], row["p"]] = row["losses"]
            for key in ("n_train", "epochs", "threads"):  # for the table's header
                setattr(args, key, saved["settings"][key])
        args.archs = list(dict.fromkeys(a for a, _ in results))
        args.correlations = sorted({p for _, p in results})
        args.seeds = min(len(v) for v in results.values())
    start = time.perf_counter()
    for p in [] if args.merge else args.correlations:
        for arch in args.archs:
            results[arch, p] = [run(arch, p, seed, args) for seed in range(args.seeds)]
            vals = results[arch, p]
            print(
                f"p={p:<4} {arch:<14} test loss {statistics.mean(vals):.4f} "
                f"(n={len(vals)}, {time.perf_counter() - start:.0f}s elapsed)",
                flush=True,
            )
    if args.save:
        rows = [{"arch": a, "p": p, "losses": v} for (a, p), v in results.items()]
        settings = {k: getattr(args, k) for k in ("n_train", "epochs", "threads", "lr", "batch")}
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump({"settings": settings, "runs": rows}, f, indent=1)

    def cell(vals: list[float]) -> str:
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.4f} ± {spread:.4f}"

    lines = [
        f"Test loss (MSE task 1 + task 2, standardised labels), mean ± std over {args.seeds} "
        f"seeds; {args.n_train} training rows, {args.epochs} epochs, {args.threads} thread(s).",
        "",
        "| architecture | " + " | ".join(f"p = {p}" for p in args.correlations) + " |",
        "|---|" + "---|" * len(args.correlations),
    ]
    for arch in args.archs:
        lines.append(
            f"| {arch} | " + " | ".join(cell(results[arch, p]) for p in args.correlations) + " |"
        )
    if "shared_bottom" in args.archs:
        lines += [
            "",
            "Gap to shared-bottom: shared-bottom's test loss minus the architecture's, on the "
            "same data and seed (positive = better than shared-bottom); mean ± std over seeds "
            "of the paired differences, and how many seeds the architecture won:",
            "",
        ]
        lines.append("| architecture | " + " | ".join(f"p = {p}" for p in args.correlations) + " |")
        lines.append("|---|" + "---|" * len(args.correlations))
        for arch in args.archs:
            if arch == "shared_bottom":
                continue
            cells = []
            for p in args.correlations:
                diffs = [
                    b - a
                    for a, b in zip(results[arch, p], results["shared_bottom", p], strict=True)
                ]
                spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                wins = sum(d > 0 for d in diffs)
                cells.append(f"{statistics.mean(diffs):+.4f} ± {spread:.4f} ({wins}/{len(diffs)})")
            lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.plot:
        plot(results, args)


def plot(results: dict[tuple[str, float], list[float]], args: argparse.Namespace) -> None:
    """Left: test loss per architecture and ``p``; right: the paired gap to shared-bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def spread(vals: list[float]) -> float:
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    ticks = range(len(args.correlations))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, arch in enumerate(args.archs):
        xs = [j + (i - len(args.archs) / 2) * 0.06 for j in ticks]
        vals = [results[arch, p] for p in args.correlations]
        left.errorbar(
            xs,
            [statistics.mean(v) for v in vals],
            yerr=[spread(v) for v in vals],
            marker="o",
            capsize=3,
            label=arch,
        )
        if arch != "shared_bottom" and "shared_bottom" in args.archs:
            diffs = [
                [b - a for a, b in zip(results[arch, p], results["shared_bottom", p], strict=True)]
                for p in args.correlations
            ]
            right.errorbar(
                xs,
                [statistics.mean(d) for d in diffs],
                yerr=[spread(d) for d in diffs],
                marker="o",
                capsize=3,
                label=arch,
                color=f"C{i}",
            )
    for ax in (left, right):
        ax.set_xticks(list(ticks), [f"p = {p}" for p in args.correlations])
        ax.legend(fontsize=8)
    left.set_ylabel("test loss (sum of MSE, standardised)")
    left.set_title("test loss vs task correlation (mean ± std over seeds)")
    right.axhline(0.0, color="grey", lw=0.8)
    right.set_ylabel("shared-bottom loss minus architecture loss")
    right.set_title("gain over shared-bottom (paired by seed)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()

"""MultiTab-Net, APEM and DTRN beside MMoE, PLE and shared-bottom: multitask gain over
single-task models on MultiTab-Bench (several task counts and correlations) and Census-Income.

* **MultiTab-Bench** (:func:`manytask.data.multitab_bench.multitab_bench`): ``--n-features``
  dense features, degree-``--complexity`` polynomial tasks (noise 0.01, standardised labels),
  ``--n-train`` / 1,000 / 1,000 rows (train / validation / test), one data set per seed. Metric:
  test MSE of each task at the epoch of lowest validation loss.
* **Census-Income (KDD)**, task group 1 (income > 50K, never married), the split of
  ``benchmarks/census.py`` (99,762 rows, 60/20/20, fixed seed); categorical columns embedded in
  8 dimensions by one :class:`~manytask.data.tabular.TabularInput` per model. Metric: test AUC
  at the epoch of best mean validation AUC.

Every model is trained from the same seed with Adam (lr ``--lr`` with a cosine decay to 0 over
the run, batch ``--batch``) under the balancer ``--balancer`` (equal weighting, i.e. the summed
loss, by default; any name of ``manytask.make_balancer`` works, gradient-level ones in
``--mode``). The **single-task
reference** of each task is a one-task MLP (a shared-bottom model with one task, the same sizes),
trained the same way on the same data and seed. **Δm** is the multitask gain of
:func:`manytask.evaluation.delta_m` (mean relative improvement over the single-task models, in
%, positive = better), computed per seed and reported as mean ± std over seeds.

Usage::

    # one command per part keeps each under ~15 minutes on one free core
    OMP_NUM_THREADS=1 python benchmarks/multitab_bench.py --parts bench --out runs/multitab.md
    OMP_NUM_THREADS=1 python benchmarks/multitab_bench.py --parts census --out runs/multitab.md
    # the mask variants of MultiTab-Net
    python benchmarks/multitab_bench.py --parts bench --tasks 3 6 --correlations 0.5 \\
        --archs multitab multitab:none multitab:fxt multitab:fxt_txt
    python benchmarks/multitab_bench.py --parts bench --tasks 3 --correlations 0.5 --seeds 1 \\
        --epochs 2                                                               # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from bundled import load_census

import manytask
from manytask.data.multitab_bench import multitab_bench
from manytask.data.tabular import TabularDataset
from manytask.evaluation import delta_m
from manytask.models import make_model
from manytask.models.inputs import TabularInput
from manytask.tasks import AUC, Task

DEFAULT_CENSUS = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "census_income_kdd"
)
ARCHS = ("multitab", "apem", "dtrn", "mmoe", "ple", "shared_bottom")
SIZES: dict[str, dict[str, Any]] = {
    "multitab": {"d_token": 16, "n_layers": 2, "n_heads": 2, "ff_hidden": 32, "mask": "txt",
                 "tower_hidden": (16,)},
    "apem": {"d_field": 8, "n_layers": 1, "n_heads": 2, "ff_hidden": 16, "tower_hidden": (16,)},
    "dtrn": {"d_field": 8, "n_experts": 4, "expert_hidden": (32,), "tower_hidden": (16,)},
    "mmoe": {"n_experts": 4, "expert_hidden": (32,), "tower_hidden": (16,)},
    "ple": {"n_levels": 2, "n_task_experts": 1, "n_shared_experts": 2, "expert_hidden": (32,),
            "tower_hidden": (16,)},
    "shared_bottom": {"hidden": (64,), "tower_hidden": (16,)},
}  # fmt: skip
Evaluate = Callable[[torch.nn.Module, TabularDataset], dict[str, float]]
MASK_ABLATION = tuple(f"multitab:{m}" for m in ("none", "fxt", "fxt_txt"))  # "multitab" is txt


def build(arch: str, tasks: Sequence[Task], **inputs: Any) -> torch.nn.Module:
    """``arch`` with its benchmark sizes; ``"multitab:<mask>"`` is MultiTab-Net with that mask."""
    name, _, mask = arch.partition(":")
    sizes = dict(SIZES[name], **({"mask": mask} if mask else {}))
    return make_model(name, tasks, **inputs, **sizes)


def train(
    model: torch.nn.Module,
    tasks: Sequence[Task],
    train_data: TabularDataset,
    score: Callable[[torch.nn.Module, TabularDataset], float],
    evaluate: Evaluate,
    val: TabularDataset,
    test: TabularDataset,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train; return the test metrics at the epoch of the best validation ``score`` (higher)."""
    balancer = manytask.make_balancer(args.balancer)
    balancer.setup([t.name for t in tasks])
    opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=args.lr)
    steps = args.epochs * -(-len(train_data) // args.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    shared = list(model.shared_parameters())  # type: ignore[operator]
    gen = torch.Generator().manual_seed(seed)
    best, at_best = -float("inf"), {}
    for _ in range(args.epochs):
        model.train()
        for batch in train_data.batches(args.batch, generator=gen):
            x: Any = batch.x if args.tabular else batch.x.dense
            outputs, feats = model(x, return_features=True)
            targets = {t.name: batch.targets[t.name] for t in tasks}
            losses = manytask.task_losses(tasks, outputs, targets)
            opt.zero_grad()
            manytask.backward(
                losses, balancer, features=feats, shared_params=shared, mode=args.mode
            )
            opt.step()
            schedule.step()
        balancer.end_epoch()
        model.eval()
        with torch.no_grad():
            current = score(model, val)
            if current > best:
                best, at_best = current, evaluate(model, test)
    return at_best


def synthetic_cell(
    n_tasks: int, p: float, seed: int, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Test MSE per task for every architecture and for the single-task models."""
    data = multitab_bench(
        args.n_train + 2000, n_tasks, p, n_features=args.n_features,
        complexity=args.complexity, seed=seed,
    )  # fmt: skip
    n = args.n_train + 2000
    train_data, val, test = data.dataset().split([args.n_train / n, 1000 / n, 1000 / n], seed)
    tasks = list(data.tasks)

    def mse(tasks_: Sequence[Task]) -> Evaluate:
        def run(model: torch.nn.Module, d: TabularDataset) -> dict[str, float]:
            out = model(d.dense)
            return {t.name: float(((out[t.name] - d.targets[t.name]) ** 2).mean()) for t in tasks_}

        return run

    def neg_loss(tasks_: Sequence[Task]) -> Callable[[torch.nn.Module, TabularDataset], float]:
        return lambda m, d: -sum(mse(tasks_)(m, d).values())

    results: dict[str, dict[str, float]] = {}
    for arch in [*args.archs, "single_task"]:
        torch.manual_seed(seed)
        if arch == "single_task":
            merged: dict[str, float] = {}
            for task in tasks:
                model = make_model("shared_bottom", [task], in_features=args.n_features,
                                   **SIZES["shared_bottom"])  # fmt: skip
                merged.update(train(model, [task], train_data, neg_loss([task]), mse([task]),
                                    val, test, seed, args))  # fmt: skip
            results[arch] = merged
        else:
            model = build(arch, tasks, in_features=args.n_features)
            results[arch] = train(model, tasks, train_data, neg_loss(tasks), mse(tasks), val,
                                  test, seed, args)  # fmt: skip
    return results


def census_cell(seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Test AUC per task for every architecture and for the single-task models."""
    census = load_census(args.census, 1, max_rows=args.max_rows)

    def auc(tasks_: Sequence[Task]) -> Evaluate:
        def run(model: torch.nn.Module, d: TabularDataset) -> dict[str, float]:
            out = model(d.x)
            return {t.name: AUC.fn(out[t.name], d.targets[t.name]) for t in tasks_}

        return run

    def mean_auc(tasks_: Sequence[Task]) -> Callable[[torch.nn.Module, TabularDataset], float]:
        return lambda m, d: statistics.mean(auc(tasks_)(m, d).values())

    results: dict[str, dict[str, float]] = {}
    for arch in [*args.archs, "single_task"]:
        torch.manual_seed(seed)
        groups = [[t] for t in census.tasks] if arch == "single_task" else [list(census.tasks)]
        merged: dict[str, float] = {}
        for tasks in groups:
            layer = TabularInput(census.cardinalities, census.n_dense, embedding_dim=8)
            name = "shared_bottom" if arch == "single_task" else arch
            model = build(name, tasks, input_layer=layer)
            merged.update(train(model, tasks, census.train, mean_auc(tasks), auc(tasks),
                                census.val, census.test, seed, args))  # fmt: skip
        results[arch] = merged
    return results


def table(
    title: str,
    per_seed: list[dict[str, dict[str, float]]],
    metric: str,
    higher: bool,
    archs: Sequence[str],
) -> str:
    """Markdown: per-task metric (mean ± std over seeds) and Δm over the single-task models."""
    tasks = list(per_seed[0]["single_task"])

    def cell(vals: list[float], fmt: str = ".4f") -> str:
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):{fmt}} ± {spread:{fmt.lstrip('+')}}"

    lines = [title, "", "| model | " + " | ".join(f"{metric} {t}" for t in tasks) + " | Δm (%) |",
             "|---|" + "---|" * (len(tasks) + 1)]  # fmt: skip
    directions = {t: {metric: higher} for t in tasks}
    for arch in [*archs, "single_task"]:
        cells = [cell([r[arch][t] for r in per_seed]) for t in tasks]
        gains = [
            delta_m(
                {t: {metric: r[arch][t]} for t in tasks},
                {t: {metric: r["single_task"][t]} for t in tasks},
                directions,
            )
            for r in per_seed
        ]
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {cell(gains, '+.2f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts", nargs="+", default=["bench", "census"], choices=["bench", "census"]
    )
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=[*ARCHS, *MASK_ABLATION])
    parser.add_argument("--tasks", nargs="+", type=int, default=[3, 6])
    parser.add_argument("--correlations", nargs="+", type=float, default=[0.2, 0.8])
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--complexity", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--census-epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--census-batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--balancer", default="equal")
    parser.add_argument("--mode", default="exact", choices=["exact", "feature"])
    parser.add_argument("--census", default=DEFAULT_CENSUS)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append the markdown tables here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out: list[str] = []

    def emit(text: str) -> None:
        print(text, f"\n({time.perf_counter() - start:.0f}s elapsed)\n", flush=True)
        out.append(text)

    settings = (f"{args.seeds} seeds, balancer {args.balancer}"
                + (f" ({args.mode} mode)" if args.balancer != "equal" else ""))  # fmt: skip
    if "bench" in args.parts:
        args.tabular = False
        for k in args.tasks:
            for p in args.correlations:
                per_seed = [synthetic_cell(k, p, s, args) for s in range(args.seeds)]
                emit(table(
                    f"MultiTab-Bench, {k} tasks, correlation {p}, degree {args.complexity}, "
                    f"{args.n_features} features, {args.n_train} training rows, {args.epochs} "
                    f"epochs, {settings}: test MSE (standardised labels) and Δm vs single-task "
                    f"MLPs.", per_seed, "MSE", False, args.archs))  # fmt: skip
    if "census" in args.parts:
        args.tabular = True
        args.epochs, args.batch = args.census_epochs, args.census_batch
        per_seed = [census_cell(s, args) for s in range(args.seeds)]
        title = (
            f"Census-Income (KDD) group 1, {args.epochs} epochs, batch {args.batch}, "
            f"{settings}: test AUC and Δm vs single-task MLPs."
        )
        emit(table(title, per_seed, "AUC", True, args.archs))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()

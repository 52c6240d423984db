"""Census-Income (KDD): per-task test AUC of each architecture under several balancers.

Data: ``../shared/data/census_income_kdd`` read as ``configs/census.yaml`` says
(:func:`bundled.load_census`)
(99,762 rows split 60/20/20 with a fixed seed, the same split for every run; task group 1 is
income > 50K and never married, group 2 education and never married, as in Ma et al., 2018).
Model: every categorical column embedded in 8 dimensions plus the 7 dense features, then the
architecture with 8 experts of 32 units (or its equivalent) and towers of 16 units.
Training: Adam (lr 1e-3, batch 1024) for ``--epochs`` epochs; the test AUC reported is the one
at the epoch with the best mean validation AUC. Gradient-level balancers use ``mode="exact"``
(gradients w.r.t. all shared parameters, embeddings included) unless ``--mode feature``.

Usage::

    python benchmarks/census.py --out census.md                        # full table
    python benchmarks/census.py --archs mmoe --balancers equal --seeds 1 --epochs 1 --max-rows 5000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from bundled import CensusData, load_census

import manytask
from manytask.data.tabular import TabularDataset
from manytask.models import make_model
from manytask.models.inputs import TabularInput
from manytask.tasks import AUC

DEFAULT_PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "census_income_kdd"
)
SIZES: dict[str, dict[str, Any]] = {
    "shared_bottom": {"hidden": (128,), "tower_hidden": (16,)},
    "omoe": {"n_experts": 8, "expert_hidden": (32,), "tower_hidden": (16,)},
    "mmoe": {"n_experts": 8, "expert_hidden": (32,), "tower_hidden": (16,)},
    "cgc": {"n_task_experts": 3, "n_shared_experts": 2, "expert_hidden": (32,),
            "tower_hidden": (16,)},
    "ple": {"n_levels": 2, "n_task_experts": 2, "n_shared_experts": 2, "expert_hidden": (32,),
            "tower_hidden": (16,)},
    "adatt": {"n_levels": 2, "n_task_experts": 3, "n_shared_experts": 2, "expert_hidden": (32,),
              "tower_hidden": (16,)},
    "dselect_k": {"n_experts": 8, "k": 2, "expert_hidden": (32,), "tower_hidden": (16,)},
    "home": {"n_global_experts": 2, "n_group_experts": 2, "n_task_experts": 2,
             "expert_hidden": (32,), "tower_hidden": (16,)},
}  # fmt: skip


def aucs(model: torch.nn.Module, data: TabularDataset, census: CensusData) -> list[float]:
    model.eval()
    with torch.no_grad():
        outputs = model(data.x)
    model.train()
    return [AUC.fn(outputs[t.name], data.targets[t.name]) for t in census.tasks]


def run(
    census: CensusData, arch: str, balancer_name: str, seed: int, args: argparse.Namespace
) -> list[float]:
    torch.manual_seed(seed)
    layer = TabularInput(census.cardinalities, census.n_dense, embedding_dim=8)
    model = make_model(arch, census.tasks, input_layer=layer, **SIZES[arch])
    balancer = manytask.make_balancer(balancer_name)
    balancer.setup([t.name for t in census.tasks])
    opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=args.lr)
    shared = list(model.shared_parameters())
    gen = torch.Generator().manual_seed(seed)
    best, test_at_best = -1.0, [float("nan")] * len(census.tasks)
    for _ in range(args.epochs):
        for batch in census.train.batches(args.batch, generator=gen):
            outputs, feats = model(batch.x, return_features=True)
            losses = manytask.task_losses(census.tasks, outputs, batch.targets)
            opt.zero_grad()
            manytask.backward(
                losses, balancer, features=feats, shared_params=shared, mode=args.mode
            )
            opt.step()
        balancer.end_epoch()
        val = statistics.mean(aucs(model, census.val, census))
        if val > best:
            best, test_at_best = val, aucs(model, census.test, census)
    return test_at_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", default=DEFAULT_PATH)
    parser.add_argument("--group", type=int, default=1, choices=[1, 2])
    parser.add_argument(
        "--archs",
        nargs="+",
        default=["shared_bottom", "omoe", "mmoe", "cgc", "ple", "adatt"],
        choices=list(SIZES),
    )
    parser.add_argument("--balancers", nargs="+", default=["equal", "uncertainty", "mgda"])
    parser.add_argument("--mode", default="exact", choices=["exact", "feature"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-rows", type=int, default=None, help="read only the first rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unknown = sorted(set(args.balancers) - set(manytask.available()))
    if unknown:
        parser.error(f"unknown balancer(s) {unknown}; available: {manytask.available()}")

    census = load_census(args.path, args.group, max_rows=args.max_rows)
    names = [t.name for t in census.tasks]
    rows = []
    start = time.perf_counter()
    for arch in args.archs:
        for bal in args.balancers:
            per_seed = [run(census, arch, bal, seed, args) for seed in range(args.seeds)]
            cells = []
            for i in range(len(names)):
                vals = [r[i] for r in per_seed]
                spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.4f} ± {spread:.4f}")
            rows.append(f"| {arch} | {bal} | " + " | ".join(cells) + " |")
            print(rows[-1], f"({time.perf_counter() - start:.0f}s elapsed)", flush=True)
    header = [
        f"Census-Income (KDD), group {args.group}: test AUC, mean ± std over {args.seeds} seeds "
        f"({len(census.train)} / {len(census.val)} / {len(census.test)} rows, "
        f"{args.epochs} epochs, "
        f"mode={args.mode}).",
        "",
        "| architecture | balancer | " + " | ".join(f"AUC {n}" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    table = "\n".join(header + rows)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()

"""The two-objective toy of the CAGrad and Nash-MTL papers: who reaches the Pareto front?

Runs each method with Adam from the papers' five starting points, plots the trajectories in
objective space over the numerically computed Pareto front, and prints a Markdown table of the
final distance to the front (objective space) per start.

    python benchmarks/toy_pareto.py --out runs/toy            # ~5-10 minutes on 2 cores
    python benchmarks/toy_pareto.py --steps 2000 --methods equal mgda   # smoke run
    # the CAGrad paper's budget and c, from the two starts where equal weighting stalls
    python benchmarks/toy_pareto.py --methods equal cagrad --param cagrad:c=0.5 \
        --steps 100000 --lr 1e-3 --starts 0 2 --out runs/toy-long
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from manytask.evaluation import toy

DEFAULT = ["equal", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "upgrad", "aligned_mtl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=DEFAULT)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="distance to the front (objective space) that counts as reached",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/toy"))
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a method's parameter, e.g. cagrad:c=0.5 (repeatable)",
    )
    parser.add_argument(
        "--starts", type=int, nargs="+", help="indices of the starting points (default: all)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    pareto = toy.front()
    params: dict[str, dict[str, float]] = {}
    for item in args.param:
        method, _, assignment = item.partition(":")
        key, sep, value = assignment.partition("=")
        if not (method and key and sep):
            parser.error(f"--param expects METHOD:KEY=VALUE, got {item!r}")
        params.setdefault(method, {})[key] = float(value)
    starts = [toy.STARTS[i] for i in args.starts] if args.starts else list(toy.STARTS)
    results = {}
    lines = [
        "| method | " + " | ".join(f"start {s}" for s in starts) + " | reached | seconds |",
        "|---" * (len(starts) + 3) + "|",
    ]
    for method in args.methods:
        began = time.perf_counter()
        trajs = toy.run(
            method, steps=args.steps, lr=args.lr, starts=starts, params=params.get(method)
        )
        seconds = time.perf_counter() - began
        results[method] = trajs
        dist = [t.distance_to(pareto) for t in trajs]
        reached = sum(d <= args.tolerance for d in dist)
        lines.append(
            f"| {method} | "
            + " | ".join(f"{d:.3f}" for d in dist)
            + f" | {reached}/{len(dist)} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    image = toy.plot(results, args.out, pareto)
    table = "\n".join(lines) + "\n"
    (args.out / "toy.md").write_text(table)
    np.save(args.out / "front.npy", pareto)
    print(f"\nsteps={args.steps} lr={args.lr} tolerance={args.tolerance}\n{table}\nplot: {image}")


if __name__ == "__main__":
    main()

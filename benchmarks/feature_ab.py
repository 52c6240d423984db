"""Interleaved A/B timing of the feature level against equal weighting on the step-cost
reference model (:mod:`step_cost`), for linear and two-layer heads.

Variants, timed in turn within each round (A B C A B C ...) so that a drift of a loaded
machine's speed hits them alike: ``equal`` weighting; ``mgda`` at the feature level as the
engine runs it (linear heads: the identity of :mod:`manytask.engine.linear_heads`);
``mgda-per-task``: the same with that path disabled (per-task feature gradients, the path
every head kind takes otherwise). Reported: the median over rounds of each variant's step time
and of its ratio to ``equal`` in the same round.

Usage::

    python benchmarks/feature_ab.py --tasks 40 --rounds 15 --out docs/results/feature_ab.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import Problem, against, interleaved, manytask_step

import manytask

engine = sys.modules["manytask.engine.backward"]  # the module (the package exports a function)

VARIANTS = ("equal", "mgda", "mgda-per-task")


def make_steps(heads: str, k: int) -> dict[str, Callable[[], None]]:
    problem = Problem.build(k, heads=heads)
    steps = {
        "equal": manytask_step(problem, manytask.make_balancer("equal"), "exact"),
        "mgda": manytask_step(problem, manytask.make_balancer("mgda"), "feature"),
    }
    general = manytask_step(problem, manytask.make_balancer("mgda"), "feature")
    fast = engine.linear_heads

    def per_task() -> None:
        engine.linear_heads = lambda *a: None  # type: ignore[assignment]
        try:
            general()
        finally:
            engine.linear_heads = fast

    steps["mgda-per-task"] = per_task
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = ["| heads | variant | K | ms/step (median) | ratio vs equal (median of rounds) |",
             "|---|---|---:|---:|---:|"]
    for heads in ("linear", "mlp"):
        steps = make_steps(heads, args.tasks)
        times = interleaved({v: steps[v] for v in VARIANTS}, args.rounds)
        timed = against(times)
        for v in VARIANTS:
            lines.append(f"| {heads} | {v} | {args.tasks} | {timed[v].median_ms:.1f} | "
                         f"{timed[v].ratio:.2f} |")
    text = ("# Feature level vs equal weighting, interleaved A/B\n\n"
            f"Command: `python {' '.join(['benchmarks/feature_ab.py', *(argv or sys.argv[1:])])}`"
            f"; torch {torch.__version__}, {args.threads} threads. Timed on a shared, heavily "
            "loaded 2-core machine: absolute times are not representative, ratios within a "
            "round are the comparable numbers. With two-layer (mlp) heads `mgda` and "
            "`mgda-per-task` run the same code (no head is linear), so their difference shows "
            "the noise.\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Interleaved A/B timing of exact mode against equal weighting and torchjd on the step-cost
reference model (:mod:`step_cost`).

Variants, timed in turn within each round so that a drift of a loaded machine's speed hits
them alike: ``equal`` weighting; for each method, ``ours`` (as the engine runs it: float32
Gramian products where certified, :mod:`manytask.engine.gramian`), ``ours-float64`` (every
block cast to float64 before its product, the behaviour before the certificate) and
``torchjd`` (its aggregator with ``mtl_backward`` + ``jac_to_grad``, when installed).
Reported: the median of each variant's step time and of its ratio to ``equal`` in the same
round.

Usage::

    python benchmarks/exact_ab.py --tasks 40 --methods mgda imtl_g --rounds 12 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import (
    Problem,
    against,
    interleaved,
    manytask_step,
    torchjd_peer,
    torchjd_step,
)

import manytask
from manytask.engine import gramian


def always_float64(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with the float32 products never certified (float64 products throughout)."""
    certified = gramian.certified

    def run() -> None:
        gramian.certified = lambda _g: False  # type: ignore[assignment]
        try:
            step()
        finally:
            gramian.certified = certified

    return run


def make_steps(problem: Problem, methods: list[str]) -> dict[tuple[str, str], Callable[[], None]]:
    steps = {("equal", "ours"): manytask_step(problem, manytask.make_balancer("equal"), "exact")}
    for name in methods:
        steps[(name, "ours")] = manytask_step(problem, manytask.make_balancer(name), "exact")
        steps[(name, "ours-float64")] = always_float64(
            manytask_step(problem, manytask.make_balancer(name), "exact"))
        peer = torchjd_peer(name, manytask.make_balancer(name), problem.k)
        if peer is not None:
            steps[(name, "torchjd")] = torchjd_step(problem, peer)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--methods", nargs="+", default=["mgda", "imtl_g"])
    parser.add_argument("--heads", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(manytask.available()))
    if unknown or args.rounds < 1 or args.tasks < 1:
        parser.error(f"unknown method(s) {unknown}" if unknown else "--rounds, --tasks >= 1")
    torch.set_num_threads(args.threads)
    steps = make_steps(Problem.build(args.tasks, heads=args.heads), args.methods)
    times = interleaved(steps, args.rounds)
    lines = ["| method | variant | K | ms/step (median) | ratio vs equal (median of rounds) |",
             "|---|---|---:|---:|---:|"]
    for (name, variant), timed in against(times, ("equal", "ours")).items():
        lines.append(f"| {name} | {variant} | {args.tasks} | {timed.median_ms:.1f} "
                     f"| {timed.ratio:.2f} |")
    text = ("# Exact mode vs equal weighting and torchjd, interleaved A/B\n\n"
            f"Command: `python {' '.join(['benchmarks/exact_ab.py', *(argv or sys.argv[1:])])}`"
            f"; torch {torch.__version__}, {args.threads} threads, {args.heads} heads. Ratios "
            "within a round are the comparable numbers.\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

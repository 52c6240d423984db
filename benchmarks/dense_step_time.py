"""Time per training step of each dense architecture relative to hard sharing, interleaved.

    python benchmarks/dense_step_time.py --out dense_step_time.md

The step-time column of ``benchmarks/dense_scenes.py`` is taken while each architecture trains
for its table, one after the other, so machine noise between architectures enters the ratio.
Here only steps are timed: in each round hard sharing runs ``--steps`` steps, then the
architecture the same number, on the same batches of generated scenes (32x32, the four tasks of
``dense_scenes.py``, batch 16, one thread); the ratio of their medians is taken per round and the
median over ``--rounds`` rounds is reported, with the spread of hard sharing's own medians across
rounds as the noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dense_scenes import TASKS, architectures, train_step

import manytask
from manytask.data.dense import DenseBatches, DenseData


def timed_steps(model, method, mode, batches, steps: int) -> float:
    """Median seconds of ``steps`` optimizer steps (Adam) of ``model`` over ``batches``."""
    opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=2e-3)
    times = []
    for x, targets in batches[:steps]:
        start = time.perf_counter()
        train_step(model, TASKS, method, mode, opt, x, targets)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", default="equal")
    ap.add_argument("--mode", default="exact", choices=("exact", "feature"))
    ap.add_argument("--archs", nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = DenseData.scenes(16 * (args.steps + 1), args.size, seed=0)
    batches = list(DenseBatches(data, 16, shuffle=False))
    builders = architectures(args.size)
    names = args.archs or [n for n in builders if n != "hard_sharing"]
    lines = ["| architecture | step ÷ hard sharing | hard sharing ms/step (min-max over rounds) |",
             "|---|---:|---:|"]
    for name in names:
        ratios, reference = [], []
        for round_ in range(args.rounds):
            times = []
            for arch in ("hard_sharing", name):
                torch.manual_seed(round_)
                method = manytask.make_balancer(args.method, tasks=[t.name for t in TASKS])
                model = builders[arch](TASKS)
                timed_steps(model, method, args.mode, batches, 1)  # warm-up
                times.append(timed_steps(model, method, args.mode, batches, args.steps))
            reference.append(times[0])
            ratios.append(times[1] / times[0])
        line = (f"| {name} | {statistics.median(ratios):.2f} | {1e3 * min(reference):.1f}-"
                f"{1e3 * max(reference):.1f} |")
        print(line, flush=True)
        lines.append(line)
    text = (f"Command: `python benchmarks/dense_step_time.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`; torch "
            f"{torch.__version__}, one thread, method {args.method} ({args.mode}).\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

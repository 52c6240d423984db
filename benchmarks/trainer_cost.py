"""What the Trainer's options cost per step: bf16/fp16 autocast against fp32, and gradient
accumulation over N = 1, 4, 16 micro-batches for a loss-level and a gradient-level method.

Model: a shared MLP 256 -> 512 -> 512 with 4 linear heads of 10 classes, random data,
batch 128 (small enough for a couple of minutes on a loaded 2-core machine; ``--width``,
``--hidden``, ``--tasks``, ``--batch`` give the step-cost reference shape on a GPU). Each
configuration runs ``--warmup`` untimed steps then ``--steps`` timed ones; the median step
time is reported. For accumulation the *same* 128 samples per optimiser step are split into
N micro-batches (so the ratios show the overhead of N smaller forwards/backwards, not of
more data). Ratios are against the fp32 /
N = 1 row of the same method, measured in the same run (rows interleaved, ``--repeats``
rounds, median over rounds).

    OMP_NUM_THREADS=1 python benchmarks/trainer_cost.py            # CPU, about 2 minutes
    python benchmarks/trainer_cost.py --device cuda --precisions fp32 bf16 fp16 \
        --width 512 --hidden 1024 1024 1024 --tasks 8 --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from manytask import HardSharing, Task, make_balancer
from manytask.training import Trainer


def _batches(n_micro: int, batch: int, width: int, tasks: list[Task], device: str) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=g)
    y = {t.name: torch.randint(0, 10, (batch,), generator=g) for t in tasks}
    size = batch // n_micro
    out = [(x[i : i + size].to(device), {k: v[i : i + size].to(device) for k, v in y.items()})
           for i in range(0, batch, size)]
    return out


def step_time(method: str, precision: str, accumulate: int, args: Any) -> float:
    tasks = [Task.classification(f"t{i}", 10) for i in range(args.tasks)]
    torch.manual_seed(0)
    model = HardSharing(tasks, args.width, hidden=tuple(args.hidden))
    trainer = Trainer(model, tasks, make_balancer(method), progress=False, lr=1e-4,
                      precision=precision, accumulate=accumulate, device=args.device)
    micro = _batches(accumulate, args.batch, args.width, tasks, args.device)
    step = micro if accumulate > 1 else micro[0]
    times = []
    for i in range(args.warmup + args.steps):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        trainer.train_step(step)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--accumulate", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--methods", nargs="+", default=["equal", "mgda"])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows: dict[tuple[str, str, int], list[float]] = {}
    cells = [(m, p, 1) for m in args.methods for p in args.precisions]
    cells += [(m, "fp32", n) for m in args.methods for n in args.accumulate if n != 1]
    for _ in range(args.repeats):  # interleaved rounds: drift on a shared machine hits all
        for cell in cells:
            rows.setdefault(cell, []).append(step_time(*cell, args))
            print(f"  {cell}: {rows[cell][-1] * 1e3:.1f} ms", flush=True)
    print(f"device {args.device}, {args.tasks} tasks, batch {args.batch}, "
          f"median of {args.steps} steps x {args.repeats} rounds, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| method | precision | micro-batches | step (ms) | vs fp32, N = 1 |")
    print("|---|---|---|---|---|")
    for method, precision, n in cells:
        t = statistics.median(rows[(method, precision, n)])
        base = statistics.median(rows[(method, "fp32", 1)])
        print(f"| {method} | {precision} | {n} | {t * 1e3:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()

"""What the Trainer's options cost per step: bf16/fp16 autocast against fp32, and gradient
accumulation over N = 1, 4, 16 micro-batches for a loss-level and a gradient-level method,
with the micro-batches' graphs kept (``accumulate_memory: graphs``) or freed (``free``).

Model: a shared MLP 256 -> 512 -> 512 with 4 linear heads of 10 classes, random data,
batch 128 (small enough for a couple of minutes on a loaded 2-core machine; ``--width``,
``--hidden``, ``--tasks``, ``--batch`` give the step-cost reference shape on a GPU). Each
configuration runs ``--warmup`` untimed steps then ``--steps`` timed ones; the median step
time is reported. For accumulation the *same* 128 samples per optimiser step are split into
N micro-batches (so the ratios show the overhead of N smaller forwards/backwards, not of
more data). Ratios are against the fp32 /
N = 1 row of the same method, measured in the same run (rows interleaved, ``--repeats``
rounds, median over rounds).

Accumulation's memory: each accumulation cell runs in a fresh process (``--cell``) on a
batch of ``--accum-batch`` samples, and reports its step time, the peak of the bytes
autograd holds saved for backward during one step (``saved_tensors_hooks``, each storage
once, the parameters' own storages left out: the activations accumulation is about, exact
whatever the load; exact mode's K x D Jacobian counts there only where the freed path's
surrogate graph saves it), and the growth of the resident set's peak during its second step
(everything: activations, per-task gradients, batched-backward temporaries; Linux only).

    OMP_NUM_THREADS=1 python benchmarks/trainer_cost.py --precisions fp32   # CPU, ~3 minutes
    python benchmarks/trainer_cost.py --device cuda --precisions fp32 bf16 fp16 \
        --width 512 --hidden 1024 1024 1024 --tasks 8 --batch 256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from manytask import HardSharing, Task, make_balancer
from manytask.training import Trainer
from manytask.training.memory import SavedBytes


def _batches(n_micro: int, batch: int, width: int, tasks: list[Task], device: str) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=g)
    y = {t.name: torch.randint(0, 10, (batch,), generator=g) for t in tasks}
    size = batch // n_micro
    out = [(x[i : i + size].to(device), {k: v[i : i + size].to(device) for k, v in y.items()})
           for i in range(0, batch, size)]
    return out


def _trainer(method: str, precision: str, accumulate: int, args: Any,
             memory: str = "free") -> Trainer:
    tasks = [Task.classification(f"t{i}", 10) for i in range(args.tasks)]
    torch.manual_seed(0)
    model = HardSharing(tasks, args.width, hidden=tuple(args.hidden))
    return Trainer(model, tasks, make_balancer(method), progress=False, lr=1e-4,
                   precision=precision, accumulate=accumulate, device=args.device,
                   accumulate_memory=memory)  # type: ignore[arg-type]


def step_time(method: str, precision: str, accumulate: int, args: Any,
              memory: str = "free", batch: int | None = None) -> float:
    trainer = _trainer(method, precision, accumulate, args, memory)
    micro = _batches(accumulate, batch or args.batch, args.width, trainer.tasks, args.device)
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


def _status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def rss_peak_of_a_step(trainer: Trainer, step: Any) -> float:
    """Growth of the resident set's peak during an optimiser step after a first one (which
    creates the optimiser's state and the libraries' buffers), in bytes: the peak is reset
    first (``/proc/self/clear_refs``, Linux). Counts everything (activations, per-task
    gradients, batched-backward temporaries); large blocks are returned to the system when
    freed (glibc's mmap threshold), so the peak follows what is alive."""
    trainer.train_step(step)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    trainer.train_step(step)
    return float(_status_kib("VmHWM") - before) * 1024


def accumulation_cell(method: str, n: int, memory: str, args: Any) -> dict[str, float]:
    """One accumulation cell, in this (fresh) process: the resident peak of its first step,
    the peak of the bytes saved for backward during one step, and the step time."""
    trainer = _trainer(method, "fp32", n, args, memory)
    micro = _batches(n, args.accum_batch, args.width, trainer.tasks, args.device)
    step = micro if n > 1 else micro[0]
    rss = rss_peak_of_a_step(trainer, step)
    counter = SavedBytes(trainer.model.parameters())
    with counter.watching(trainer.model):
        trainer.train_step(step)
    seconds = step_time(method, "fp32", n, args, memory, args.accum_batch)
    return {"seconds": seconds, "saved": counter.peak, "rss": rss}


def run_cell(method: str, n: int, memory: str, argv: list[str]) -> dict[str, float]:
    # glibc: a fixed mmap threshold, so that freed blocks leave the resident set (its
    # dynamic threshold would keep them on the heap, and the RSS peak would not show frees)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, *argv, "--cell", method, str(n), memory],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def accumulation_table(args: Any, argv: list[str]) -> None:
    cells = [(m, n, mem) for m in args.methods for n in args.accumulate
             for mem in (("graphs",) if n == 1 else ("graphs", "free"))]
    got: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for c in cells:
            got.setdefault(c, []).append(run_cell(*c, argv))
            print(f"  {c}: {got[c][-1]}", flush=True)
    print(f"\naccumulation: batch {args.accum_batch} per optimiser step, {args.tasks} tasks, "
          f"median of {args.steps} steps x {args.repeats} rounds, one process per cell\n")
    print("| method | N | graphs | step (ms) | vs N = 1 | saved for backward, peak (MiB) | "
          "vs kept | RSS peak growth in a step (MiB) | vs kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, n, mem in cells:
        def med(key: str, c: tuple[str, int, str]) -> float:
            return statistics.median(r[key] for r in got[c])
        c, one, kept = (method, n, mem), (method, 1, "graphs"), (method, n, "graphs")
        print(f"| {method} | {n} | {'kept' if mem == 'graphs' else 'freed'} | "
              f"{med('seconds', c) * 1e3:.1f} | {med('seconds', c) / med('seconds', one):.2f} | "
              f"{med('saved', c) / 2**20:.2f} | {med('saved', c) / med('saved', kept):.2f} | "
              f"{med('rss', c) / 2**20:.1f} | {med('rss', c) / med('rss', kept):.2f} |")


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
    parser.add_argument("--accum-batch", type=int, default=1024,
                        help="samples per optimiser step in the accumulation cells")
    parser.add_argument("--cell", nargs=3, metavar=("METHOD", "N", "MEMORY"),
                        help="internal: run one accumulation cell and print it as JSON")
    args = parser.parse_args()
    if args.cell:
        method, n, memory = args.cell
        print(json.dumps(accumulation_cell(method, int(n), memory, args)))
        return
    rows: dict[tuple[str, str, int], list[float]] = {}
    cells = [(m, p, 1) for m in args.methods for p in args.precisions]
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
    accumulation_table(args, sys.argv[1:])


if __name__ == "__main__":
    main()

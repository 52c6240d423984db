"""Gradient-balancing methods on eight text tasks over the frozen MiniLM encoder.

Each task (sst2, mr, cr, subj, mpqa, cola, rte, trec) has its own sentences and head; a shared
MLP trunk runs on cached all-MiniLM-L6-v2 embeddings (:mod:`manytask.data.encoders`), trained
jointly on mixed batches (:class:`manytask.data.text.MixedTaskBatches`); the data are
``configs/text.yaml`` (the files route), whose ``sample:`` caps each task at 2000 train / 500
val / 1000 test examples because embedding on 2 CPU cores is slow; the embeddings are computed
once into ``--cache-dir``.

    python benchmarks/text_mtl.py --data-root ../shared/data/text --embed-only
    python benchmarks/text_mtl.py --data-root ../shared/data/text --run-dir runs/bench-text
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from manytask.config import load_config
from manytask.data.declared import parse_dataset, prepare_declared
from manytask.data.declared.spec import select_tasks
from manytask.evaluation.bench import grid, run_grid
from manytask.evaluation.report import report

METHODS = ["equal", "uncertainty", "mgda", "pcgrad", "cagrad", "famo", "nash_mtl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--config", default="configs/text.yaml")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--run-dir", default="runs/bench-text")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--embed-only", action="store_true", help="fill the cache and stop")
    args = parser.parse_args()
    torch.set_num_threads(1)

    overrides = {"data_root": args.data_root, "cache_dir": args.cache_dir}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    base = load_config(args.config, overrides)
    base = dataclasses.replace(base, progress=False)
    spec = parse_dataset(base.dataset, args.data_root)
    names = base.tasks or [t.name for t in spec.tasks]
    began = time.perf_counter()
    for name in names:  # one task at a time, so the log shows progress; the runs reuse them
        prepare_declared(select_tasks(spec, [name]), cache_dir=args.cache_dir, batch_size=128)
        print(f"embeddings of {name} ({time.perf_counter() - began:.0f} s)", flush=True)
    if args.embed_only:
        return
    cells = grid(args.methods, [base.arch], args.seeds, names)
    run_dir = Path(args.run_dir)
    run_grid(base, cells, run_dir)
    made = report([run_dir])
    print(made["summary"].read_text())
    print(f"report: {made['html']}")


if __name__ == "__main__":
    main()

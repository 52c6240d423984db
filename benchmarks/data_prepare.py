"""Reading and preparing a declared table, and training throughput end to end vs the pure step.

A generated table of ``--rows`` rows and 50 columns: 30 numeric features, 8 categorical
features (20-500 values) and 12 label columns for 10 tasks of mixed kinds (3 classification,
3 binary with 10 % missing labels, 3 regression, 1 multi-label over 3 columns), split by a
seeded ratio. It is written as CSV and as Parquet (not timed), then each is read and prepared
by ``manytask.data.declared.prepare_declared`` (read, fit scaling / vocabularies / classes on
the training rows, convert every split) in a fresh subprocess, so that the peak memory
(``ru_maxrss``) is that of preparing alone.

Throughput: the same prepared batches trained (equal weighting, the tabular hard-sharing
model) by ``Trainer.fit`` for ``--train-steps`` steps, against a pure loop of forward, summed
task losses, backward and Adam step over the same batches (no logging, no checks).

Usage::

    python benchmarks/data_prepare.py --rows 1000000 --out data_prepare.md
    python benchmarks/data_prepare.py --rows 2000 --train-steps 20     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

N_NUMERIC, N_CATEGORICAL = 30, 8
KINDS = ["classification"] * 3 + ["binary"] * 3 + ["regression"] * 3 + ["multilabel"]


def make_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {}
    x = rng.normal(size=(rows, N_NUMERIC)).astype(np.float32)
    for j in range(N_NUMERIC):
        cols[f"n{j}"] = pa.array(x[:, j])
    for j in range(N_CATEGORICAL):
        size = [20, 50, 100, 500][j % 4]
        codes = rng.integers(0, size, rows)
        cols[f"c{j}"] = pa.DictionaryArray.from_arrays(
            codes.astype(np.int32), pa.array([f"v{k}" for k in range(size)])).cast(pa.string())
    for t, kind in enumerate(KINDS):
        signal = x[:, t] + 0.5 * x[:, t + 10]
        if kind == "classification":
            cols[f"y{t}"] = pa.array(np.digitize(signal, [-0.5, 0.5]).astype(np.int64))
        elif kind == "binary":
            y = (signal > 0).astype(np.float64)
            y[rng.random(rows) < 0.1] = np.nan
            cols[f"y{t}"] = pa.array(y, from_pandas=True)
        elif kind == "regression":
            cols[f"y{t}"] = pa.array(signal + 0.1 * rng.normal(size=rows))
        else:
            for k in range(3):
                cols[f"y{t}_{k}"] = pa.array((x[:, k + 20] > 0).astype(np.int64))
    assert len(cols) == 50
    return pa.table(cols)


def section(file: str) -> dict:  # type: ignore[type-arg]
    tasks = []
    for t, kind in enumerate(KINDS):
        label = [f"y{t}_{k}" for k in range(3)] if kind == "multilabel" else f"y{t}"
        tasks.append({"name": f"t{t}", "kind": kind, "label": label})
    return {"table": {"file": file, "split": {"ratio": [0.8, 0.1, 0.1], "seed": 0},
                      "numeric": [f"n{j}" for j in range(N_NUMERIC)],
                      "categorical": [f"c{j}" for j in range(N_CATEGORICAL)],
                      "tasks": tasks}}


def prepare_once(file: str, batch_size: int) -> dict:  # type: ignore[type-arg]
    """Read and prepare ``file`` in this process; seconds and peak RSS."""
    from manytask.data.declared import parse_dataset, prepare_declared

    began = time.perf_counter()
    data = prepare_declared(parse_dataset(section(file)), cache_dir=tempfile.gettempdir(),
                            batch_size=batch_size)
    seconds = time.perf_counter() - began
    assert len(data.tasks) == 10
    return {"seconds": seconds,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def throughput(file: str, batch_size: int, steps: int) -> dict:  # type: ignore[type-arg]
    import torch

    from manytask import Trainer
    from manytask.balancers import make_balancer
    from manytask.data.declared import parse_dataset, prepare_declared
    from manytask.models import shared_bottom
    from manytask.models.inputs import TabularInput
    from manytask.tasks import task_losses

    torch.manual_seed(0)
    data = prepare_declared(parse_dataset(section(file)), cache_dir=tempfile.gettempdir(),
                            batch_size=batch_size)
    batches = []
    for i, batch in enumerate(data.train):
        if i >= steps:
            break
        batches.append(batch)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return shared_bottom(data.tasks, input_layer=TabularInput(
            data.cardinalities, data.n_dense, embedding_dim=8), hidden=[256, 256])

    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for x, y in batches[:3]:  # warm-up
        opt.zero_grad()
        sum(task_losses(data.tasks, net(x), y).values()).backward()  # type: ignore[union-attr]
        opt.step()
    began = time.perf_counter()
    for x, y in batches:
        opt.zero_grad()
        sum(task_losses(data.tasks, net(x), y).values()).backward()  # type: ignore[union-attr]
        opt.step()
    pure = (time.perf_counter() - began) / len(batches)
    trainer = Trainer(model(), data.tasks, make_balancer("equal"), lr=1e-3, progress=False)
    trainer.fit(batches[:3], 1)  # warm-up
    began = time.perf_counter()
    trainer.fit(batches, 1)
    full = (time.perf_counter() - began) / len(batches)
    return {"pure_ms": 1000 * pure, "trainer_ms": 1000 * full, "ratio": full / pure}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the Markdown table here")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(prepare_once(args.child[0], int(args.child[1]))))
        return 0
    import pyarrow.parquet as pq
    from pyarrow import csv

    lines = [f"rows {args.rows:,}, 50 columns, 10 tasks; {platform.processor() or 'cpu'}, "
             f"{os.cpu_count()} cores (shared, loaded machine), {args.threads} torch threads",
             "", "| format | file MiB | read + prepare s | rows/s | peak RSS MiB |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        table = make_table(args.rows)
        files = {"csv": Path(tmp) / "big.csv", "parquet": Path(tmp) / "big.parquet"}
        csv.write_csv(table, files["csv"])
        pq.write_table(table, files["parquet"])
        del table
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for fmt, path in files.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(path),
                                  str(args.batch_size)], capture_output=True, text=True,
                                 env=env, check=True, cwd=tmp)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            lines.append(f"| {fmt} | {path.stat().st_size / 2**20:.0f} | {r['seconds']:.1f} | "
                         f"{args.rows / r['seconds']:,.0f} | {r['peak_mib']:.0f} |")
        os.chdir(tmp)
        t = throughput(str(files["parquet"]), args.batch_size, args.train_steps)
    lines += ["", "| step | ms/step (batch " + str(args.batch_size) + ") |", "|---|---|",
              f"| pure loop (forward, summed losses, backward, Adam) | {t['pure_ms']:.2f} |",
              f"| Trainer.fit, equal weighting | {t['trainer_ms']:.2f} |",
              f"| ratio | {t['ratio']:.2f}x |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dense metrics under two gloo processes equal those of one process on the whole set."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manytask.data.dense import DenseBatches, DenseData
from manytask.dense import DenseTask, evaluate_dense
from manytask.models.dense import DenseHardSharing, ResNetBackbone

TASKS = [DenseTask.segmentation("semantic", 5), DenseTask.depth(), DenseTask.normal(),
         DenseTask.edge()]


def build() -> tuple[DenseHardSharing, DenseData]:
    torch.manual_seed(0)
    return DenseHardSharing(TASKS, ResNetBackbone((8, 12)), head_hidden=8), DenseData.scenes(6, 16)


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        model, data = build()
        shard = data.subset(range(rank, len(data), 2))  # each rank evaluates half the set
        result = evaluate_dense(model, DenseBatches(shard, 2), TASKS)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_report_the_whole_sets_metrics(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    model, data = build()
    single = evaluate_dense(model, DenseBatches(data, 3), TASKS)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for task, metrics in single.items():
            for name, value in metrics.items():
                assert abs(got[task][name] - value) <= 1e-6 * max(1.0, abs(value)), (task, name)

"""Two gloo processes, each scoring half of the evaluation set, equal one process on all of it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manytask import Task
from manytask.metrics import TaskEvaluator

N = 90


def tasks() -> list[Task]:
    return [
        Task.classification("c", 3, metrics=["accuracy", "f1_macro", "mcc", "auroc", "log_loss"]),
        Task.binary("b", metrics=["auroc", "average_precision", "balanced_accuracy"]),
        Task.regression("r", 2, metrics=["rmse", "r2", "pearson", "spearman"]),
    ]


def batches() -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(6):  # 6 batches of 15; a few missing labels
        yc = torch.randint(0, 3, (15,), generator=g)
        yc[0] = -1
        yb = torch.randint(0, 2, (15, 1), generator=g).float()
        yb[1] = float("nan")
        yr = torch.randn(15, 2, generator=g)
        outputs = {"c": torch.randn(15, 3, generator=g), "b": torch.randn(15, 1, generator=g),
                   "r": yr + torch.randn(15, 2, generator=g)}
        out.append((outputs, {"c": yc, "b": yb, "r": yr}))
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        evaluator = TaskEvaluator(tasks(), sync=True)
        for i, (outputs, targets) in enumerate(batches()):
            if i % world == rank:  # this process's shard
                evaluator.update(outputs, targets)
        result = evaluator.compute()
        if rank == 0:
            torch.save(result, Path(out_dir) / "result.pt")
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_equal_one(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(2, _port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    two = torch.load(tmp_path / "result.pt", weights_only=True)
    one_eval = TaskEvaluator(tasks())
    for outputs, targets in batches():
        one_eval.update(outputs, targets)
    one = one_eval.compute()
    assert set(two) == set(one) == {"c", "b", "r"}
    for task, row in one.items():
        assert set(two[task]) == set(row)
        for name, v in row.items():
            assert two[task][name] == pytest.approx(v, rel=1e-5, abs=1e-6), (task, name)

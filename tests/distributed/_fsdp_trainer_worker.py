"""The Trainer with ``shard="fsdp"``, one process per rank: ``python _fsdp_trainer_worker.py
OUT_DIR`` with torchrun's variables. Each configuration trains (float64, 2 epochs of 3 steps,
Adam with gradient clipping) into ``OUT_DIR/<config>``; rank 0 writes the checkpoints. Then a
sharded run stopped after one epoch is resumed into ``OUT_DIR/resumed``. The test runs
:func:`fit` in its own process, without sharding, for the reference."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from _fsdp_worker import idle_data  # beside this file (the test puts it on the path)
from _worker import tasks

from manytask.balancers import make_balancer
from manytask.models import HardSharing
from manytask.training import Trainer
from manytask.training.distributed import ShardedBatches, context, init_from_env

# name: (method, mode, Trainer options). Rank 1's shard holds no label in the first step and
# task c is labelled on rank 0 only (idle_data): every step takes the uneven passes.
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # loss level; Adam's foreach kernels over the sharded group and the heads' group
    "equal": ("equal", "exact", {"optimizer": "torch.optim.Adam",
                                 "optimizer_params": {"foreach": True}}),
    "uncertainty": ("uncertainty", "exact", {}),  # learnable weights, stepped with the model
    "mgda_exact": ("mgda", "exact", {}),  # Gramian from the reduce-scattered slices
    "pcgrad_exact": ("pcgrad", "exact", {}),  # Jacobian aggregator
    "mgda_feature": ("mgda", "feature", {}),
    "graddrop_feature": ("graddrop", "feature", {}),
    # two micro-batches per step: two forwards through the sharded part before one backward
    "mgda_accumulate": ("mgda", "exact", {"accumulate": 2}),
}
EPOCHS = 2
RESUMED = "uncertainty"  # the configuration the resumed run repeats


def fit(name: str, run_dir: Path, epochs: int = EPOCHS, resume: bool = False) -> Trainer:
    """Train ``name`` into ``run_dir`` (sharded when a process group is initialised)."""
    method, mode, options = CONFIGS[name]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ctx = context()
        torch.manual_seed(0)
        model = HardSharing(tasks(), 8, hidden=(16, 16))
        extra = {"shuffle": False} if method == "pcgrad" else {}
        trainer = Trainer(
            model, tasks(), make_balancer(method, **extra), lr=1e-2, clip_grad_norm=1.0,
            mode=mode, run_dir=run_dir, progress=False, log_every=1,  # type: ignore[arg-type]
            shard="fsdp" if ctx is not None else "none", **options,
        )
        batches = idle_data()
        data = batches if ctx is None else ShardedBatches(batches, ctx.rank, ctx.world_size)
        trainer.fit(data, epochs, resume=resume)
        return trainer
    finally:
        torch.set_default_dtype(default)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_from_env("gloo")
    assert ctx is not None and ctx.world_size > 1
    out = Path(out_dir)
    for name in CONFIGS:
        fit(name, out / name)
    fit(RESUMED, out / "resumed", epochs=1)
    fit(RESUMED, out / "resumed", resume=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

"""Training used by the distributed tests: run as a script, one process per rank.

``python _worker.py OUT_DIR`` with torchrun's variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) set; rank 0 writes what each configuration learned to
``OUT_DIR/<config>.safetensors``. The tests also call :func:`run_config` in their own process
for the single-process reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from manytask.balancers import make_balancer
from manytask.data import TensorBatches
from manytask.models import HardSharing
from manytask.tasks import Task
from manytask.training import Trainer
from manytask.training import loop as trainer_module  # the epoch loop saves checkpoints
from manytask.training.distributed import ShardedBatches, context, init_from_env

CONFIGS: dict[str, tuple[str, dict[str, object], str]] = {
    "equal": ("equal", {}, "exact"),
    "uncertainty": ("uncertainty", {}, "exact"),
    "mgda_exact": ("mgda", {}, "exact"),
    "mgda_feature": ("mgda", {}, "feature"),
    "pcgrad": ("pcgrad", {"shuffle": False}, "exact"),
    "cagrad": ("cagrad", {}, "exact"),
    "nash_mtl": ("nash_mtl", {}, "exact"),
    # Jacobian-level: the update vector itself (exact: reduced K x P Jacobian; feature: the
    # K x (B x d) Jacobian gathered over ranks)
    "moco_exact": ("moco", {}, "exact"),
    "moco_feature": ("moco", {}, "feature"),
    "graddrop_feature": ("graddrop", {}, "feature"),
    # accumulation over 2 micro-batches per rank (freed graphs): a loss level, exact and
    # feature Gramians, a Jacobian aggregator in feature mode
    "uncertainty_accumulate": ("uncertainty", {}, "exact"),
    "mgda_exact_accumulate": ("mgda", {}, "exact"),
    "mgda_feature_accumulate": ("mgda", {}, "feature"),
    "moco_feature_accumulate": ("moco", {}, "feature"),
}
GLOBAL_BATCH = 16
STEPS_PER_EPOCH = 3
EPOCHS = 2


def tasks() -> list[Task]:
    return [Task.classification("a", 4), Task.regression("b"), Task.binary("c")]


def data() -> TensorBatches:
    """48 samples; task ``c`` is labelled in the first quarter of each batch only, so with two
    ranks it is present on rank 0 and absent on rank 1; ``a`` and ``b`` miss some labels, so
    ranks hold different labelled counts."""
    g = torch.Generator().manual_seed(1)
    n = GLOBAL_BATCH * STEPS_PER_EPOCH
    x = torch.randn(n, 8, generator=g)
    a = torch.randint(0, 4, (n,), generator=g)
    a[torch.rand(n, generator=g) < 0.3] = -1
    b = x[:, :1] * 2.0 + 0.1 * torch.randn(n, 1, generator=g)
    b[torch.rand(n, generator=g) < 0.2] = float("nan")
    c = (x[:, 1:2] > 0).float()
    c[(torch.arange(n) % GLOBAL_BATCH) >= 4] = float("nan")
    return TensorBatches(x, {"a": a, "b": b, "c": c}, GLOBAL_BATCH, shuffle=True, seed=3)


def run_config(name: str) -> dict[str, torch.Tensor]:
    """Train configuration ``name`` in float64; return its per-step weights and final state.

    float64, because float32 rounding alone (a sum over 16 samples against two sums over 8)
    moves results by about 1e-7 per step, which several steps of a method sensitive to it
    (uncertainty weighting's ``1 - exp(-s) L``) amplify past 1e-6: the tests check the method.
    """
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _train(name)
    finally:
        torch.set_default_dtype(default)


def _train(name: str) -> dict[str, torch.Tensor]:
    method, params, mode = CONFIGS[name]
    micro = 2 if name.endswith("_accumulate") else 1
    torch.manual_seed(0)
    model = HardSharing(tasks(), 8, hidden=(16, 16))
    trainer = Trainer(
        model,
        tasks(),
        make_balancer(method, **params),
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        mode=mode,  # type: ignore[arg-type]
        progress=False,
        accumulate=micro,
    )
    ctx = context()
    batches = data() if ctx is None else ShardedBatches(data(), ctx.rank, ctx.world_size)
    weights = []
    for epoch in range(EPOCHS):
        batches.set_epoch(epoch)
        for batch in batches:
            row = trainer.train_step(split(batch, micro) if micro > 1 else batch)
            assert row is not None
            weights.append([row.get(f"weight/{t.name}", float("nan")) for t in tasks()])
    out = {f"param/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state = trainer.balancer.state_dict()
    out.update({f"balancer/{k}": v.detach().clone() for k, v in state.items()})
    out["weights"] = torch.tensor(weights, dtype=torch.float64)
    return out


def split(batch: Any, n: int) -> list[Any]:
    """``batch`` cut into ``n`` micro-batches of consecutive samples."""
    x, targets = batch
    size = -(-len(x) // n)
    return [(x[i: i + size], {k: v[i: i + size] for k, v in targets.items()})
            for i in range(0, len(x), size)]


def fit(run_dir: str, epochs: int, resume: bool) -> dict[str, torch.Tensor]:
    """``Trainer.fit`` with checkpoints in ``run_dir`` (Adam, uncertainty weighting: both
    have state to restore); returns the final parameters."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = HardSharing(tasks(), 8, hidden=(16, 16))
        trainer = Trainer(
            model, tasks(), "uncertainty", lr=1e-2, run_dir=run_dir, progress=False, log_every=1
        )
        ctx = context()
        batches = data() if ctx is None else ShardedBatches(data(), ctx.rank, ctx.world_size)
        trainer.fit(batches, epochs, resume=resume)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_default_dtype(default)


def main(out_dir: str, fresh_dir: str, resume_dir: str) -> None:
    """Every configuration, then two checkpointed runs: ``fresh_dir`` from scratch for 2
    epochs, ``resume_dir`` (written by one process) resumed up to 4 epochs."""
    torch.set_num_threads(1)
    ctx = init_from_env("gloo")
    assert ctx is not None and ctx.world_size > 1
    for name in CONFIGS:
        result = run_config(name)
        if ctx.is_main:
            save_file(result, str(Path(out_dir) / f"{name}.safetensors"))
    saves = []
    real_save = trainer_module.save_checkpoint

    def counting_save(*args: Any, **kwargs: Any) -> Path:
        saves.append(args[1])
        return real_save(*args, **kwargs)

    trainer_module.save_checkpoint = counting_save
    fit(fresh_dir, 2, resume=False)
    resumed = fit(resume_dir, 4, resume=True)
    if ctx.is_main:
        save_file(resumed, str(Path(out_dir) / "resumed.safetensors"))
    (Path(out_dir) / f"saves-{ctx.rank}.json").write_text(json.dumps(saves))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])

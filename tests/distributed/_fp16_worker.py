"""fp16 with the gradient scaler under torchrun: one process per rank,
``python _fp16_worker.py OUT_DIR`` with torchrun's variables; every rank writes what each
configuration learned to ``OUT_DIR/<config>-<rank>.safetensors``. The test runs
:func:`run_config` in its own process for the one-process reference.

The first global batch overflows in float16 on rank 1's half only (inputs 3000 times larger),
so the skip must reach rank 0 through the collectives."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _worker import GLOBAL_BATCH, tasks  # beside this file (the test puts it on the path)
from safetensors.torch import save_file

from manytask.balancers import make_balancer
from manytask.data import TensorBatches
from manytask.models import HardSharing
from manytask.training import Trainer
from manytask.training.distributed import ShardedBatches, context, init_from_env

# a loss weighting, a learnable one, MGDA in both modes and GradVac (state a skip must keep)
CONFIGS: dict[str, tuple[str, str]] = {
    "equal": ("equal", "exact"),
    "uncertainty": ("uncertainty", "exact"),
    "mgda_exact": ("mgda", "exact"),
    "mgda_feature": ("mgda", "feature"),
    "gradvac": ("gradvac", "exact"),
}
STEPS = 4


def data() -> TensorBatches:
    """``STEPS`` global batches in order; samples 8-15 of the first (rank 1's half under two
    processes) make float16 gradients overflow at the initial scale 2^16."""
    g = torch.Generator().manual_seed(5)
    n = GLOBAL_BATCH * STEPS
    x = torch.randn(n, 8, generator=g)
    x[GLOBAL_BATCH // 2: GLOBAL_BATCH] *= 3000.0
    a = torch.randint(0, 4, (n,), generator=g)
    a[torch.rand(n, generator=g) < 0.3] = -1
    b = x[:, :1] / 3000.0 + 0.1 * torch.randn(n, 1, generator=g)
    c = (x[:, 1:2] > 0).float()
    return TensorBatches(x, {"a": a, "b": b, "c": c}, GLOBAL_BATCH, shuffle=False)


def run_config(name: str) -> dict[str, torch.Tensor]:
    """Train ``name`` under fp16 (float32 weights); the final parameters, the method's state,
    the per-step weights (NaN rows: skipped steps), the steps taken and skipped and the
    scaler's final scale."""
    method, mode = CONFIGS[name]
    torch.manual_seed(0)
    model = HardSharing(tasks(), 8, hidden=(16, 16))
    trainer = Trainer(model, tasks(), make_balancer(method, tasks=[t.name for t in tasks()]),
                      optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05), mode=mode,  # type: ignore[arg-type]
                      precision="fp16", progress=False)
    ctx = context()
    batches = data() if ctx is None else ShardedBatches(data(), ctx.rank, ctx.world_size)
    weights = []
    for batch in batches:
        row = trainer.train_step(batch)
        weights.append([float("nan")] * 3 if row is None else
                       [row[f"weight/{t.name}"] for t in tasks()])
    out = {f"param/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"balancer/{k}": v.detach().clone()
                for k, v in trainer.balancer.state_dict().items()})
    out["weights"] = torch.tensor(weights, dtype=torch.float64)
    assert trainer.scaler is not None
    out["counts"] = torch.tensor([trainer.step, trainer.overflow_steps])
    out["scale"] = torch.tensor(float(trainer.scaler.get_scale()), dtype=torch.float64)
    return out


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_from_env("gloo")
    assert ctx is not None and ctx.world_size > 1
    for name in CONFIGS:
        save_file(run_config(name), str(Path(out_dir) / f"{name}-{ctx.rank}.safetensors"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

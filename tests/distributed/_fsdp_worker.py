"""The own-loop recipe with the shared part sharded by FSDP2 (``fully_shard``), one process per
rank: ``python _fsdp_worker.py OUT_DIR`` with torchrun's variables; rank 0 writes what each
configuration learned to ``OUT_DIR/<config>.safetensors``. The test runs :func:`run_config`
in its own process, without sharding, for the reference."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _worker import (  # beside this file (the test puts it on the path)
    EPOCHS,
    GLOBAL_BATCH,
    data,
    tasks,
)
from safetensors.torch import save_file
from torch import nn

import manytask
from manytask.balancers import available, make_balancer
from manytask.data import TensorBatches
from manytask.models import HardSharing
from manytask.tasks import task_losses
from manytask.training.distributed import ShardedBatches, context, init_from_env, sync_gradients

NEEDS: dict[str, dict[str, object]] = {"periodic": {"base": "mgda"}}
# every method in exact mode; the Jacobian aggregators and MGDA in feature mode too
CONFIGS: dict[str, tuple[str, str]] = {f"{n}_exact": (n, "exact") for n in available()}
CONFIGS.update({f"{n}_feature": (n, "feature")
                for n in ("mgda", "moco", "graddrop", "excess_mtl")})
# rank 1 has no labelled sample in the first step: it must still run the passes and join the
# collectives of the others (manytask.engine.uneven), for every kind of method: loss level,
# Gramian, Jacobian, a loss weighting from gradients, a schedule that reuses weights
IDLE = {f"{n}_{m}_idle": (n, m) for n, m in (
    ("equal", "exact"), ("uncertainty", "exact"), ("mgda", "exact"), ("pcgrad", "exact"),
    ("imtl", "exact"), ("gradnorm", "exact"), ("periodic", "exact"), ("mgda", "feature"),
    ("graddrop", "feature"),
)}
CONFIGS.update(IDLE)


def idle_data() -> TensorBatches:
    """``_worker.data()`` in order, with no label in samples 8-15 (rank 1's half of the first
    global batch under two processes)."""
    batches = data()
    x, targets = batches.x, dict(batches.targets)
    targets["a"] = targets["a"].clone()
    targets["a"][8:16] = -1
    for name in ("b", "c"):
        targets[name] = targets[name].clone()
        targets[name][8:16] = float("nan")
    return TensorBatches(x, targets, GLOBAL_BATCH, shuffle=False)


def shard(model: HardSharing) -> None:
    """FSDP2 on each linear layer of the shared trunk and on the trunk; parameters stay
    gathered from the forward to the backward (the engine differentiates w.r.t. them)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.shared.modules():
        if isinstance(layer, nn.Linear):
            fully_shard(layer, reshard_after_forward=False)
    fully_shard(model.shared, reshard_after_forward=False)


def run_config(name: str) -> dict[str, torch.Tensor]:
    """Train ``name`` in float64 for the epochs of ``_worker``; the final parameters (whole),
    the method's state and the weights of each step."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _train(*CONFIGS[name], idle_data() if name in IDLE else data())
    finally:
        torch.set_default_dtype(default)


def _train(method_name: str, mode: str, glob: TensorBatches) -> dict[str, torch.Tensor]:
    ctx = context()
    torch.manual_seed(0)
    model = HardSharing(tasks(), 8, hidden=(16, 16))
    method = make_balancer(method_name, tasks=[t.name for t in tasks()],
                           **NEEDS.get(method_name, {}))
    if ctx is not None:
        shard(model)
    optimizer = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.1)
    batches = glob if ctx is None else ShardedBatches(glob, ctx.rank, ctx.world_size)
    weights = []
    for epoch in range(EPOCHS):
        batches.set_epoch(epoch)
        for x, targets in batches:
            outputs, features = model(x, return_features=True)
            losses = task_losses(tasks(), outputs, targets)
            counts = {t.name: int(t.labelled(targets[t.name]).sum())
                      for t in tasks() if t.name in losses}
            optimizer.zero_grad(set_to_none=True)
            result = manytask.backward(losses, method, features=features,
                                       shared_params=list(model.shared_parameters()),
                                       mode=mode, counts=counts)  # type: ignore[arg-type]
            sync_gradients([*model.parameters(), *method.parameters()])  # FSDP's left out
            optimizer.step()
            weights.append([result.weights.get(t.name, float("nan")) for t in tasks()])
    out = {}
    for key, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[f"param/{key}"] = full.detach().clone()
    out.update({f"balancer/{k}": v.detach().clone() for k, v in method.state_dict().items()})
    out["weights"] = torch.tensor(weights, dtype=torch.float64)
    return out


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_from_env("gloo")
    assert ctx is not None and ctx.world_size > 1
    for name in CONFIGS:
        result = run_config(name)
        if ctx.is_main:
            save_file(result, str(Path(out_dir) / f"{name}.safetensors"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

"""The Trainer's shared part sharded with FSDP2 (``shard="fsdp"``) under ``torchrun``.

:func:`shard_shared` applies ``torch.distributed.fsdp.fully_shard`` to each layer of the
model's shared part that holds parameters, then to the part itself, with
``reshard_after_forward=False`` so that the parameters the engine differentiates stay gathered
from the forward to the backward (docs/distributed.md). The heads and the method's parameters
are not sharded: their gradients are averaged by
:func:`~manytask.engine.collectives.sync_gradients`, FSDP reduce-scatters the shared part's.

Checkpoints and saved models stay whole: the same files as an unsharded run, so that a run
resumes on any number of processes, sharded or not. :class:`WholeState` gathers the model's
and the optimiser's states into whole tensors (collectives that every rank joins; rank 0
receives them and alone writes) and loads whole states back into the shards on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..engine.collectives import DistContext, fsdp_managed
from ..finite import NonFiniteTensorError, check_state
from .checkpoint import Stateful

Shard = Literal["none", "fsdp"]
SHARDS: tuple[Shard, ...] = ("none", "fsdp")


def check_shard(shard: str, ctx: DistContext | None, *, cosine_every: int | None,
                precision: str = "fp32") -> bool:
    """Whether to shard; a one-line ``ValueError`` where ``shard`` cannot work."""
    if shard not in SHARDS:
        raise ValueError(f"shard must be one of {list(SHARDS)}, got {shard!r}")
    if shard == "none":
        return False
    if ctx is None:
        raise ValueError("shard='fsdp' shards the shared part across processes: run under "
                         "torchrun with 2 or more processes (one process has nothing to "
                         "share it with)")
    if cosine_every is not None:
        raise ValueError("cosine_every computes task gradients on the ranks with labels "
                         "only, while with shard='fsdp' every rank must run the same "
                         "backward passes: leave cosine_every unset")
    if precision == "fp16":
        raise ValueError("shard='fsdp' with precision='fp16': torch's gradient scaler cannot "
                         "unscale sharded and plain gradients together (use bf16)")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise ValueError("shard='fsdp' needs torch.distributed.fsdp.fully_shard "
                         "(PyTorch >= 2.4)") from None
    return True


def shard_shared(model: Any, device: torch.device, ctx: DistContext) -> None:
    """``fully_shard`` each module of ``model.shared`` that holds parameters of its own
    (innermost first), then ``model.shared``; parameters stay gathered after the forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    shared = getattr(model, "shared", None)
    if not isinstance(shared, nn.Module):
        raise ValueError(f"shard='fsdp': {type(model).__name__} has no shared module to shard")
    own = {id(p) for p in model.shared_parameters()}
    if own != {id(p) for p in shared.parameters()}:
        raise ValueError(f"shard='fsdp': the shared parameters of {type(model).__name__} are "
                         "not those of its shared module, which is what FSDP shards")
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for module in reversed(list(shared.modules())):  # children before their parents
        if module is not shared and any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh, reshard_after_forward=False)
    fully_shard(shared, mesh=mesh, reshard_after_forward=False)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of every sharded module (no collective): the next
    forward gathers them again, from the shards a load or an optimiser step changed."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _whole(value: Any) -> Any:
    """A sharded tensor gathered whole, on the CPU (a collective); anything else as it is."""
    if isinstance(value, Tensor) and fsdp_managed(value):
        return value.full_tensor().cpu()  # type: ignore[attr-defined]
    return value


class WholeState:
    """The model and optimiser of a sharded Trainer as whole state dicts, in the formats of
    ``model.state_dict()`` and ``optimizer.state_dict()``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ctx: DistContext) -> None:
        self.model = model
        self.optimizer = optimizer
        self.ctx = ctx

    def model_state(self) -> dict[str, Tensor]:
        """Every rank calls it; rank 0 gets the whole tensors (on the CPU), the others ``{}``."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        reshard(self.model)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        return {k: v for k, v in state.items() if isinstance(v, Tensor)} if self.ctx.is_main else {}

    def optimizer_state(self) -> dict[str, Any]:
        """``optimizer.state_dict()`` with each sharded moment gathered whole; every rank
        calls it (one all-gather per sharded tensor, in the same order on every rank)."""
        state = self.optimizer.state_dict()
        whole = {pid: {name: _whole(v) for name, v in entry.items()}
                 for pid, entry in state["state"].items()}
        if not self.ctx.is_main:
            return {"state": {}, "param_groups": state["param_groups"]}
        return {"state": whole, "param_groups": state["param_groups"]}

    def load_model_state(self, state: Mapping[str, Tensor]) -> None:
        """Load a whole state dict (every rank holds it) into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        reshard(self.model)  # gathered copies would be stale after the load
        set_model_state_dict(self.model, dict(state),
                             options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        """Load a whole ``optimizer.state_dict()``: each moment of a sharded parameter is cut
        to this rank's shard (``distribute_tensor`` with the parameter's own layout)."""
        from torch.distributed.tensor import distribute_tensor

        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        local: dict[Any, dict[str, Any]] = {}
        for pid, entry in state["state"].items():
            param = params[int(pid)] if 0 <= int(pid) < len(params) else None
            local[pid] = {}
            for name, value in entry.items():
                if (param is not None and fsdp_managed(param) and isinstance(value, Tensor)
                        and tuple(value.shape) == tuple(param.shape)):
                    value = distribute_tensor(value.to(param.device), param.device_mesh,
                                              param.placements)
                local[pid][name] = value
        self.optimizer.load_state_dict({"state": local, "param_groups": state["param_groups"]})

    def checked_model_state(self, where: str) -> dict[str, Tensor]:
        """:meth:`model_state`, finite: rank 0 checks and tells every rank, so that all
        raise the same one-line error (a collective, like the gather)."""
        state = self.model_state()
        message: list[str | None] = [None]
        if self.ctx.is_main:
            try:
                check_state(state, where)
            except NonFiniteTensorError as err:
                message[0] = str(err)
        dist.broadcast_object_list(message, src=0, group=self.ctx.group)
        if message[0] is not None:
            raise NonFiniteTensorError(message[0])
        return state


class Gathered:
    """A state dict already gathered, standing for a module or an optimiser where a
    checkpoint is written."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> Mapping[str, Any]:
        return self.state

    def load_state_dict(self, state: Any, /) -> None:
        raise TypeError("a gathered state is written, not loaded")


class ShardedModel:
    """Stands for a sharded model where a checkpoint is loaded: its ``state_dict()`` (the
    shards, whose shapes and dtypes are the whole tensors') is what the loader checks the file
    against; ``load_state_dict`` takes the whole tensors."""

    def __init__(self, whole: WholeState) -> None:
        self.whole = whole

    def state_dict(self) -> dict[str, Any]:
        return self.whole.model.state_dict()

    def load_state_dict(self, state: Any, /) -> None:
        self.whole.load_model_state(state)


class ShardedOptimizer:
    """Stands for the optimiser of a sharded model where a checkpoint is loaded."""

    def __init__(self, whole: WholeState) -> None:
        self.whole = whole

    def state_dict(self) -> dict[str, Any]:
        return self.whole.optimizer.state_dict()

    def load_state_dict(self, state: Any, /) -> None:
        self.whole.load_optimizer_state(state)


def load_targets(trainer: Any) -> tuple[Stateful, Stateful]:
    """The model and optimiser a checkpoint is loaded into (every rank loads it)."""
    whole: WholeState | None = trainer.whole_state
    if whole is None:
        return trainer.model, trainer.optimizer
    return ShardedModel(whole), ShardedOptimizer(whole)


def save_sources(trainer: Any) -> tuple[Stateful, Stateful]:
    """What a checkpoint is written from: the model and optimiser, or, sharded, their whole
    states (gathered here: every rank must call this; rank 0 writes)."""
    whole: WholeState | None = trainer.whole_state
    if whole is None:
        return trainer.model, trainer.optimizer
    return Gathered(whole.model_state()), Gathered(whole.optimizer_state())


def clip_grad_norm(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters of which some are sharded (their
    gradients DTensors, which torch's fused norm cannot mix with plain tensors): the total
    2-norm ``sqrt(sum_p |g_p|^2)``, each sharded gradient's norm reduced over its ranks,
    then every gradient scaled by ``min(1, max_norm / (norm + 1e-6))`` as torch does."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(fsdp_managed(g) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = [torch.linalg.vector_norm(g) for g in grads]
    whole = [n.full_tensor() if fsdp_managed(n) else n for n in norms]
    total = torch.linalg.vector_norm(torch.stack(whole))
    coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    if coef != 1.0:  # non-finite too: the caller sees the norm and skips the step
        for g in grads:
            g.mul_(coef)
    return total

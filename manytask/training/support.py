"""Small pieces of the Trainer's step and resume: random number states for flat regions,
the flat-regions option check, the model's auxiliary losses, and the cut-back of the experts
log on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..balancers import Balancer
from ..engine.backward import NonFiniteLossError
from ..engine.flat import check_flat_method
from .logs import replace_lines

RngState = tuple[Tensor, Tensor | None]


def rng_state(device: torch.device) -> RngState:
    """The CPU generator's state, and the accelerator's when training on CUDA."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def check_flat(rho: float, balancer: Balancer, mode: str, dist: Any) -> None:
    if not rho >= 0:
        raise ValueError(f"flat_rho must be >= 0, got {rho}")
    check_flat_method(balancer, "flat_rho")
    if mode != "exact":
        raise ValueError("flat_rho perturbs the shared parameters: it needs mode='exact'")
    if dist is not None:
        raise ValueError("flat_rho is not supported under torchrun (one process only)")


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Drop the lines of ``path`` whose ``key`` exceeds ``last`` (epochs a resume redoes)."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # a write cut off by a kill: drop the partial line
        lines.pop()
        text = ""  # forces the rewrite below

    def keep(line: str) -> bool:
        try:
            return bool(line.strip()) and json.loads(line)[key] <= last
        except (json.JSONDecodeError, KeyError, TypeError):
            return False

    kept = [ln for ln in lines if keep(ln)]
    if len(kept) != len(lines) or not text:
        replace_lines(path, [ln + "\n" for ln in kept])


def mean_auxiliary(parts: list[dict[str, Tensor]], names: tuple[str, ...]) -> dict[str, Tensor]:
    """The micro-batches' auxiliary losses, each name's mean over the micro-batches (the
    union batch's value when the loss is a mean over equal-sized micro-batches, as MoA's
    routing cross-entropy; a batch statistic, as Align-LoRA's fitted Gaussians, is estimated
    per micro-batch). A name the model did not declare is refused."""
    out: dict[str, Tensor] = {}
    for losses in parts:
        for name, value in losses.items():
            if name not in names:
                raise ValueError(f"the model returned auxiliary loss {name!r}, not among its "
                                 f"auxiliary_loss_names() {list(names)}")
            if value.dim() != 0:
                raise ValueError(f"auxiliary loss {name!r} must be a scalar, got shape "
                                 f"{tuple(value.shape)}")
            out[name] = out.get(name, 0) + value / len(parts)
    return out


def backward_auxiliary(losses: dict[str, Tensor], scale: float, step: int) -> None:
    """Backpropagate the sum of the auxiliary losses (times the fp16 loss ``scale``), keeping
    the graph for the task losses' backward; a non-finite one raises before anything is
    backpropagated."""
    for name, value in losses.items():
        if not bool(torch.isfinite(value.detach())):
            raise NonFiniteLossError(f"aux/{name}", float(value.detach()), step)
    total = torch.stack([v.float() for v in losses.values()]).sum()
    (total * scale).backward(retain_graph=True)

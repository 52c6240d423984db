"""ColD Fusion: collaborative descent by repeated fine-tune-then-fuse rounds.

Don-Yehiya et al., 2023, "ColD Fusion: Collaborative Descent for Distributed Multitask
Finetuning" (ACL), Sec. 3: a shared model ``theta^r`` is sent to every contributor, each
fine-tunes it on its own data, and the results are fused into the next shared model,

    theta^{r+1} = Fuse(theta^r_1, ..., theta^r_C),   theta^r_c = FineTune_c(theta^r),

with ``Fuse`` the parameter average (the paper's choice); the loop repeats for a number of
rounds. No data leaves a contributor: only fine-tuned weights are exchanged.

Here ``contributors`` are callables that fine-tune a model in place on their own data (any
training loop, so each contributor keeps its own optimiser, loss and schedule). Buffers
(e.g. batch-norm statistics) are averaged like parameters; integer buffers are taken from the
first contributor. Memory bound: the shared model plus one fine-tuned copy per contributor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class ColdFusionResult:
    model: nn.Module
    # per round, the distance ||theta^{r+1} - theta^r|| of the shared model (convergence)
    moved: list[float] = field(default_factory=list)


def fuse_average(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The parameter average of state dicts (integer tensors from the first)."""
    out = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            out[name] = torch.stack([s[name] for s in states]).mean(0)
        else:
            out[name] = first.clone()
    return out


def cold_fusion(
    model: nn.Module,
    contributors: Sequence[Callable[[nn.Module], None]],
    *,
    rounds: int = 3,
    fuse: Callable[[Sequence[dict[str, Tensor]]], dict[str, Tensor]] = fuse_average,
) -> ColdFusionResult:
    """Run ``rounds`` of ColD Fusion from ``model`` (left unchanged); return the fused model."""
    if not contributors:
        raise ValueError("cold_fusion: needs at least one contributor")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"cold_fusion: rounds must be a positive integer, got {rounds!r}")
    shared = copy.deepcopy(model)
    moved = []
    for r in range(rounds):
        before = {n: t.detach().clone() for n, t in shared.state_dict().items()}
        states = []
        for c, finetune in enumerate(contributors):
            local = copy.deepcopy(shared)
            finetune(local)
            state = {n: t.detach().clone() for n, t in local.state_dict().items()}
            bad = [n for n, t in state.items() if t.is_floating_point()
                   and not bool(torch.isfinite(t).all())]
            if bad:
                raise FloatingPointError(
                    f"cold_fusion: contributor {c} returned non-finite {bad[0]!r} in round {r}"
                )
            states.append(state)
        shared.load_state_dict(fuse(states))
        after = shared.state_dict()
        moved.append(float(torch.sqrt(sum(
            ((after[n].double() - before[n].double()) ** 2).sum()
            for n in before if before[n].is_floating_point()
        ))))
    return ColdFusionResult(shared, moved)

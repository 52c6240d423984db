"""AdaTT: adaptive task-to-task fusion.

Li, Zhang, Deng, Zhu, Zhong, Gao, Xu, Li and Yao, "AdaTT: Adaptive Task-to-Task Fusion Network
for Multitask Learning in Recommendations", KDD 2023, Section 3 (fusion units).

Each level holds task-specific expert groups (and optionally shared experts). Task ``t``'s
fusion unit at level ``l`` combines **all** experts of the level with a gate read from task
``t``'s own input, and adds a residual linear combination of its own experts::

    f_t^l = v_t^T E_t^l + G_t^T E^l,        G_t = softmax(W_t x_t^{l-1})

where ``E^l`` stacks every expert output of the level and ``E_t^l`` task ``t``'s. With one
expert per task the paper's residual is the identity (``v_t = 1``, not learned), as here; with
more, ``v_t`` is learned (initialised to ones). Shared experts, when present, get a shared
fusion unit (a gate over all experts) at every level but the last, as in PLE.

Shared part: the input layer and every fusion level; ``features(x)`` is ``{task: f_t^L}``.
Gate weights sum to 1 over all experts of a level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from ..tasks import Task
from .ple import PLE


class AdaTT(PLE):
    """Adaptive task-to-task fusion (Li et al., 2023).

    Args:
        tasks: the tasks; each gets its expert group, fusion unit and tower.
        in_features: width of the input tensor (or give ``input_layer``).
        n_levels: number of fusion levels.
        n_task_experts: experts of each task at each level.
        n_shared_experts: shared experts at each level (0: task-specific experts only).
        expert_hidden: widths of each expert MLP; the last one is the feature width.
        tower_hidden: hidden widths of each task tower.
        input_layer: a module applied first, exposing ``out_features``.
        dropout: dropout inside experts and towers.

    ``gate_weights`` holds ``"level{j}/{task}"`` (and ``"level{j}/shared"``) gates.
    """

    task_scope: Literal["own", "all"] = "all"
    native_residual = True

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        n_levels: int = 2,
        n_task_experts: int = 2,
        n_shared_experts: int = 0,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        if isinstance(n_task_experts, int) and n_task_experts < 1:
            raise ValueError(f"AdaTT: n_task_experts must be >= 1, got {n_task_experts!r}")
        super().__init__(
            tasks,
            in_features,
            n_levels=n_levels,
            n_task_experts=n_task_experts,
            n_shared_experts=n_shared_experts,
            expert_hidden=expert_hidden,
            tower_hidden=tower_hidden,
            input_layer=input_layer,
            dropout=dropout,
        )

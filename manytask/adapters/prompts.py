"""Soft prompts: multitask prompt tuning (MPT) and task prompt vectors (prompt arithmetic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import Param
from .base import ADAPTERS, AdapterMethod, positive_int
from .layer import Context

LENGTH = Param("int", 10, "soft prompt length l (virtual tokens)", low=1)
SEED = Param("int", 0, "seed of the prompt's initialisation", low=0)


def vocabulary_init(base: nn.Module, length: int, seed: int) -> Tensor:
    """(l, d) rows of the input embedding matrix at random token ids (Lester et al., 2021,
    Sec. 3: initialising from sampled vocabulary embeddings)."""
    table = base.get_input_embeddings().weight  # type: ignore[operator]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, table.shape[0], (length,), generator=generator)
    return table.detach()[ids.to(table.device)].clone().float()


@ADAPTERS.register()
class MultitaskPromptTuning(AdapterMethod):
    """Multitask prompt tuning (Wang et al., 2023, "Multitask Prompt Tuning Enables
    Parameter-Efficient Transfer Learning", Eq. 1-2): task t's prompt is
    ``P_t = P* ∘ (u_t v_t^T)``, the shared prompt P* (l x d) times a rank-1 matrix
    (u_t in R^l, v_t in R^d, both ones at start), prepended to the input embeddings. P* is
    distilled from per-task teacher prompts with :func:`mpt_distillation_loss` (Eq. 3-4) or,
    by :meth:`init_from_teachers`, started at their mean."""

    name = "mpt"
    uses_layers = False
    params: ClassVar[dict[str, Param]] = {
        "length": LENGTH, "seed": SEED}

    def __init__(self, n_tasks: int, length: int = 10, seed: int = 0) -> None:
        super().__init__(n_tasks)
        self.length, self.seed = positive_int(length, "length", self.name), int(seed)
        self.shared_prompt = nn.Parameter(torch.zeros(0))
        self.task_u = nn.Parameter(torch.ones(n_tasks, self.length))
        self.task_v = nn.Parameter(torch.zeros(0))

    def setup(self, base: nn.Module) -> None:
        init = vocabulary_init(base, self.length, self.seed)
        self.shared_prompt = nn.Parameter(init)
        self.task_v = nn.Parameter(torch.ones(self.n_tasks, init.shape[1]))

    def task_prompts(self, tasks: Tensor | None = None) -> Tensor:
        """(K, l, d): every task's prompt P* ∘ (u_t v_t^T); with ``tasks``, one per entry."""
        u, v = (self.task_u, self.task_v) if tasks is None else \
            (self.task_u[tasks], self.task_v[tasks])
        return self.shared_prompt[None] * (u[:, :, None] * v[:, None, :])

    def prompt(self, ctx: Context) -> Tensor:
        return self.task_prompts(ctx.tasks.long())

    def init_from_teachers(self, teachers: Tensor) -> None:
        """Set P* to the mean of teacher prompts (S, l, d) and u, v to ones."""
        if teachers.dim() != 3 or teachers.shape[1:] != self.shared_prompt.shape:
            raise ValueError(f"mpt: teacher prompts must be (S, {self.length}, "
                             f"{self.shared_prompt.shape[1]}), got {tuple(teachers.shape)}")
        with torch.no_grad():
            self.shared_prompt.copy_(teachers.mean(0))
            self.task_u.fill_(1.0)
            self.task_v.fill_(1.0)


def mpt_distillation_loss(student_logits: Tensor, teacher_logits: Tensor,
                          student_hidden: Tensor, teacher_hidden: Tensor,
                          weight: float = 1.0) -> Tensor:
    """MPT's distillation term (Wang et al., 2023, Eq. 3-4), to add to the task losses:
    ``weight * (KL(softmax(teacher) || softmax(student)) + mean ||h_s - h_t||^2)``."""
    kl = nn.functional.kl_div(torch.log_softmax(student_logits, -1),
                              torch.log_softmax(teacher_logits.detach(), -1),
                              log_target=True, reduction="batchmean")
    mse = (student_hidden - teacher_hidden.detach()).pow(2).sum(-1).mean()
    return weight * (kl + mse)


@ADAPTERS.register()
class TaskPromptVectors(AdapterMethod):
    """Task prompt vectors (Belanec et al., 2024, "Task Prompt Vectors: Effective
    Initialization through Multi-Task Soft-Prompt Transfer", Sec. 3): every task t tunes its
    own soft prompt theta_t from one shared random initialisation theta_0 (kept as a buffer);
    its task prompt vector is ``tau_t = theta_t - theta_0`` and prompt arithmetic starts a
    new prompt at ``theta_0 + sum_t lambda_t tau_t`` (:meth:`arithmetic`)."""

    name = "task_prompt_vectors"
    uses_layers = False
    params: ClassVar[dict[str, Param]] = {
        "length": LENGTH, "seed": SEED}

    def __init__(self, n_tasks: int, length: int = 10, seed: int = 0) -> None:
        super().__init__(n_tasks)
        self.length, self.seed = positive_int(length, "length", self.name), int(seed)
        self.register_buffer("initial_prompt", torch.zeros(0))
        self.task_prompts = nn.Parameter(torch.zeros(0))

    def setup(self, base: nn.Module) -> None:
        init = vocabulary_init(base, self.length, self.seed)
        self.initial_prompt = init.clone()
        self.task_prompts = nn.Parameter(init[None].repeat(self.n_tasks, 1, 1))

    def prompt(self, ctx: Context) -> Tensor:
        return self.task_prompts[ctx.tasks.long()]

    def vectors(self) -> Tensor:
        """(K, l, d): the task prompt vectors tau_t = theta_t - theta_0."""
        return self.task_prompts.detach() - self.initial_prompt

    def arithmetic(self, weights: Mapping[int, float] | Tensor) -> Tensor:
        """(l, d): ``theta_0 + sum_t lambda_t tau_t`` (``weights``: {task: lambda} or (K,))."""
        lam = torch.zeros(self.n_tasks)
        if isinstance(weights, Tensor):
            if weights.shape != (self.n_tasks,):
                raise ValueError(f"task_prompt_vectors: weights must have shape "
                                 f"({self.n_tasks},), got {tuple(weights.shape)}")
            lam = weights.detach().float().cpu()
        else:
            for t, w in weights.items():
                if not 0 <= int(t) < self.n_tasks:
                    raise ValueError(f"task_prompt_vectors: no task {t}")
                lam[int(t)] = float(w)
        vec = self.vectors()
        return self.initial_prompt + (lam.to(vec)[:, None, None] * vec).sum(0)

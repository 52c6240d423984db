"""Task vectors of an encoder as one (K, P) matrix, and the merged encoder they define.

Every learned merge here works on ``theta = theta_0 + sum_k c_k (.) tau_k``: the base
encoder's parameters ``theta_0`` (flattened), the fine-tuned encoders' task vectors
``tau_k = theta_k - theta_0`` (rows of a K x P matrix), and coefficients ``c`` of some
granularity (one per task, per task and tensor, or per task and parameter block). The merged
encoder is run functionally (``torch.func.functional_call``), so only the coefficients are
learned and no module is modified. Memory bound: K + 2 copies of the encoder's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .batches import BatchCycle

OBJECTIVES = ("supervised", "entropy")


def check_learning(where: str, n_models: int, heads: Sequence[nn.Module],
                   loaders: Sequence[object], *, steps: int, lr: float,
                   min_tasks: int = 1) -> None:
    """The arguments every learned merge shares, checked in one place: one head and one
    loader per fine-tuned model (at least ``min_tasks``), a whole number of steps, lr > 0."""
    if n_models < min_tasks or len(heads) != n_models or len(loaders) != n_models:
        need = f">= {min_tasks} tasks with " if min_tasks > 1 else ""
        raise ValueError(f"{where}: needs {need}one head and one loader per task; got "
                         f"{n_models} state dicts, {len(heads)} heads, {len(loaders)} loaders")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{where}: steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"{where}: lr must be > 0, got {lr!r}")


def prediction_entropy(logits: Tensor) -> Tensor:
    """Mean over samples of the Shannon entropy of ``softmax(logits)`` (natural log)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


class TaskVectors:
    """The task vectors of ``task_state_dicts`` relative to ``encoder``'s parameters.

    ``blocks`` (optional) maps each parameter name to a block label: coefficients of
    granularity ``"block"`` are shared within a block (aTLAS's parameter blocks); by default
    every tensor is its own block.
    """

    def __init__(
        self,
        encoder: nn.Module,
        task_state_dicts: Sequence[Mapping[str, Tensor]],
        where: str,
        *,
        blocks: Mapping[str, str] | None = None,
    ) -> None:
        if len(task_state_dicts) < 1:
            raise ValueError(f"{where}: needs at least one fine-tuned state dict")
        self.encoder = encoder
        self.where = where
        base = {n: p.detach() for n, p in encoder.named_parameters()}
        self.names = list(base)
        for i, sd in enumerate(task_state_dicts):
            missing = [n for n in self.names if n not in sd]
            if missing:
                raise ValueError(f"{where}: task_state_dicts[{i}] lacks {missing[:5]}")
            for n in self.names:
                if sd[n].shape != base[n].shape:
                    raise ValueError(
                        f"{where}: tensor {n!r} of task {i} has shape {tuple(sd[n].shape)}, "
                        f"the encoder has {tuple(base[n].shape)}"
                    )
        self.shapes = {n: base[n].shape for n in self.names}
        self.sizes = [base[n].numel() for n in self.names]
        self.base = torch.cat([base[n].reshape(-1) for n in self.names])
        self.taus = torch.stack([
            torch.cat([(sd[n].to(self.base.dtype) - base[n]).reshape(-1) for n in self.names])
            for sd in task_state_dicts
        ])
        if not bool(torch.isfinite(self.taus).all()):
            raise ValueError(f"{where}: a task vector holds NaN or inf")
        labels = [n if blocks is None else blocks.get(n, n) for n in self.names]
        self.block_names = list(dict.fromkeys(labels))
        index = {b: i for i, b in enumerate(self.block_names)}
        self.block_of = torch.repeat_interleave(
            torch.tensor([index[b] for b in labels]), torch.tensor(self.sizes)
        )
        self.buffers = {n: b.detach() for n, b in encoder.named_buffers()}

    @property
    def k(self) -> int:
        return self.taus.shape[0]

    def coefficient_shape(self, granularity: str) -> tuple[int, ...]:
        if granularity == "task":
            return (self.k,)
        if granularity in ("layer", "block"):
            return (self.k, len(self.block_names))
        raise ValueError(f"{self.where}: granularity must be 'task', 'layer' or 'block', "
                         f"got {granularity!r}")

    def merged(self, coef: Tensor) -> Tensor:
        """``theta_0 + sum_k coef_k (.) tau_k`` as a flat vector (coef: (K,) or (K, blocks))."""
        if coef.dim() == 1:
            return self.base + coef.to(self.taus.dtype) @ self.taus
        return self.base + (coef[:, self.block_of] * self.taus).sum(0)

    def params(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self.sizes)
        return {n: part.view(self.shapes[n]) for n, part in zip(self.names, parts, strict=True)}

    def forward(self, flat: Tensor, inputs: Tensor) -> Tensor:
        """The encoder with parameters ``flat`` applied to ``inputs`` (differentiable)."""
        from torch.func import functional_call

        return functional_call(self.encoder, (self.params(flat), self.buffers), (inputs,))

    def state_dict(self, flat: Tensor) -> dict[str, Tensor]:
        """The encoder's full state dict with parameters ``flat`` (buffers from the base)."""
        params = self.params(flat.detach())
        return {n: params[n].clone() if n in params else v.clone()
                for n, v in self.encoder.state_dict().items()}


def task_objective(vectors: TaskVectors, flat: Tensor, heads: Sequence[nn.Module],
                   cycles: Sequence[BatchCycle], objective: str) -> Tensor:
    """Summed over tasks, one batch each: the cross-entropy of ``(x, y)`` batches through the
    task's head (``"supervised"``) or the prediction entropy of inputs (``"entropy"``), of the
    encoder with parameters ``flat``."""
    loss = torch.zeros((), dtype=vectors.base.dtype)
    for head, cycle in zip(heads, cycles, strict=True):
        if objective == "supervised":
            x, y = cycle.next_batch()
            loss = loss + nn.functional.cross_entropy(head(vectors.forward(flat, x)), y)
        else:
            loss = loss + prediction_entropy(head(vectors.forward(flat, cycle.next_input())))
    return loss

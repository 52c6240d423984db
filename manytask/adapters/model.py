"""A frozen Hugging Face model with a multi-task adapter, and the multi-task model around it.

Inputs are mappings of tensors: ``input_ids`` and ``attention_mask`` (B, L) padded on the
right, ``task_ids`` (B,) or (B, 1) each example's task index (its position in the model's
task list), and optionally ``token_type_ids`` (B, L), ``languages`` (B,) (Hyper-X) and ``intuition``
(B, d) (MoR1E). The features the heads read are the pooled last hidden state: the mean over
real tokens (encoders; what sentence-transformers' MiniLM embeds, without the
normalisation) or the last real token (``pooling="last"``, decoders such as GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..models.base import MultiTaskModel, mlp
from ..tasks import Task
from .base import ADAPTERS, AdapterMethod
from .layer import AdaptedLayer, Context, ContextHolder, inject, masked_mean

Pooling = Literal["mean", "last"]
OPTIONAL = ("token_type_ids", "languages", "intuition")


def is_task_specific(name: str) -> bool:
    """Whether a parameter name (dotted) is task-specific: its own name starts ``task_``."""
    return name.rsplit(".", 1)[-1].startswith("task_") or ".task_" in name


def _column(ids: Tensor) -> Tensor:
    """Indices (B,) from (B,) or (B, 1): batch builders that need 2-D columns store them so."""
    ids = ids.long()
    return ids[:, 0] if ids.dim() == 2 and ids.shape[1] == 1 else ids


class AdaptedBase(nn.Module):
    """``base`` (frozen) with ``method`` inserted at ``target_modules`` (or its prompts
    prepended); ``forward`` returns the pooled features (B, H)."""

    def __init__(self, base: nn.Module, method: AdapterMethod,
                 target_modules: str | Sequence[str] | None = None,
                 pooling: Pooling = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"AdaptedBase: pooling must be 'mean' or 'last', got {pooling!r}")
        self.base, self.method, self.pooling = base, method, pooling
        self.holder = ContextHolder()
        self.target_modules = target_modules
        for p in base.parameters():
            p.requires_grad_(False)
        method.setup(base)
        if method.uses_layers:
            if target_modules is None:
                raise ValueError(f"adapter {method.name!r} needs target_modules (module names "
                                 "as PEFT's, e.g. ['query', 'value'])")
            method.layers = inject(base, target_modules, method.make, self.holder)
        self.last_losses: dict[str, Tensor] = {}
        self.consumed = True

    @property
    def layers(self) -> dict[str, AdaptedLayer]:
        return self.method.layers

    def context(self, x: Mapping[str, Tensor]) -> Context:
        missing = [k for k in ("input_ids", "attention_mask", "task_ids") if k not in x]
        if missing:
            raise ValueError(f"adapter model input lacks {missing}; it needs input_ids, "
                             "attention_mask and task_ids (one task index per example)")
        tasks = _column(x["task_ids"])
        if tasks.dim() != 1 or tasks.shape[0] != x["input_ids"].shape[0]:
            raise ValueError(f"task_ids must be (B,) = ({x['input_ids'].shape[0]},), got "
                             f"{tuple(tasks.shape)}")
        if tasks.numel() and (int(tasks.min()) < 0 or int(tasks.max()) >= self.method.n_tasks):
            raise ValueError(f"task_ids must lie in [0, {self.method.n_tasks}), got values "
                             f"{int(tasks.min())}..{int(tasks.max())}")
        languages = x.get("languages")
        return Context(tasks=tasks, mask=x["attention_mask"], intuition=x.get("intuition"),
                       languages=None if languages is None else _column(languages))

    def hidden_states(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The base's last hidden state (B, L', H) over the real positions kept and their
        mask (B, L'); prompt positions are cut off."""
        if self.training and not self.consumed:
            raise RuntimeError(f"adapter {self.method.name!r}: the auxiliary loss of the "
                               "previous training forward was never taken; train with the "
                               "Trainer, or add model.auxiliary_loss() to the objective "
                               "each step")
        ctx = self.context(x)
        mask = x["attention_mask"]
        used = torch.nonzero(mask.any(0))
        keep = int(used[-1, 0]) + 1 if used.numel() else 1  # right padding past here: dropped
        mask = mask[:, :keep]
        ctx.mask = mask
        kwargs: dict[str, Any] = {"attention_mask": mask}
        if "token_type_ids" in x:
            kwargs["token_type_ids"] = x["token_type_ids"][:, :keep]
        self.holder.current = ctx
        try:
            prompt = self.method.prompt(ctx)
            if prompt is None:
                out = self.base(input_ids=x["input_ids"][:, :keep], **kwargs)
            else:
                embed = self.base.get_input_embeddings()(x["input_ids"][:, :keep])  # type: ignore[operator]
                n = prompt.shape[1]
                kwargs["inputs_embeds"] = torch.cat([prompt.to(embed.dtype), embed], 1)
                kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], 1)
                if "token_type_ids" in kwargs:
                    types = kwargs["token_type_ids"]
                    kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], n),
                                                          types], 1)
                out = self.base(**kwargs)
        finally:
            self.holder.current = None
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if prompt is not None:
            hidden = hidden[:, prompt.shape[1]:]
        if self.training and ctx.losses:  # per name: the sum of the layers' terms
            self.last_losses = {k: torch.stack(v).sum() for k, v in ctx.losses.items()}
            self.consumed = False
        return hidden, mask

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        hidden, mask = self.hidden_states(x)
        if self.pooling == "mean":
            return masked_mean(hidden, mask)
        last = mask.long().sum(1).clamp_min(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """The method's auxiliary losses of the last training forward by name (Align-LoRA's
        ``align``, MoA's ``route``), weighted, summed over layers; taking them clears them."""
        losses, self.last_losses, self.consumed = self.last_losses, {}, True
        return losses


class AdapterModel(MultiTaskModel):
    """A multi-task model: a frozen transformer with the adapter ``method`` (a registered
    name, see ``manytask.adapters.ADAPTERS``, or an :class:`AdapterMethod`), pooled
    features, one head per task. Works with ``manytask.backward`` and the Trainer like any
    :class:`~manytask.models.MultiTaskModel`: the features are the pooled hidden state, and
    :meth:`shared_parameters` are the trainable adapter parameters not owned by one task.
    Methods with an auxiliary loss (``align_lora``, ``moa``) compute it in each training
    forward (:meth:`auxiliary_losses`); the Trainer adds it to the objective, outside the
    balancing of the task losses. In your own loop, backpropagate :meth:`auxiliary_loss`
    (with ``retain_graph=True``) before ``manytask.backward``: a training forward refuses to
    run while the previous one's auxiliary loss was never taken.
    """

    def __init__(self, base: nn.Module, tasks: Sequence[Task], method: str | AdapterMethod,
                 *, target_modules: str | Sequence[str] | None = None,
                 pooling: Pooling = "mean", head_hidden: Sequence[int] = (),
                 **params: Any) -> None:
        if isinstance(method, str):
            built: AdapterMethod = ADAPTERS.build(method, len(tasks), **params)
        elif params:
            raise ValueError(f"AdapterModel: parameters {sorted(params)} are given with an "
                             "already built method")
        else:
            built = method
        method = built
        if method.n_tasks != len(tasks):
            raise ValueError(f"AdapterModel: the method has {method.n_tasks} tasks, "
                             f"got {len(tasks)} tasks")
        config: Any = base.config
        width = int(config.hidden_size)
        heads = {t.name: mlp([width, *head_hidden, t.out_features], last_activation=False)
                 for t in tasks}
        super().__init__(AdaptedBase(base, built, target_modules, pooling), heads)
        self.task_index = {t.name: i for i, t in enumerate(tasks)}

    @property
    def adapted(self) -> AdaptedBase:
        assert isinstance(self.shared, AdaptedBase)
        return self.shared

    @property
    def method(self) -> AdapterMethod:
        return self.adapted.method

    def auxiliary_loss_names(self) -> tuple[str, ...]:
        return self.method.auxiliary_names()

    def auxiliary_losses(self) -> dict[str, Tensor]:
        return self.adapted.auxiliary_losses()

    def auxiliary_loss(self) -> Tensor | None:
        """The auxiliary losses of the last training forward summed (what your own loop adds
        to the objective), or ``None`` when there is none; taking it clears them."""
        losses = self.auxiliary_losses()
        return torch.stack(list(losses.values())).sum() if losses else None

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        for name, p in self.shared.named_parameters():
            if p.requires_grad and not is_task_specific(name):
                yield p

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Every trainable parameter of the adapter (not the heads), by name."""
        return {n: p for n, p in self.shared.named_parameters() if p.requires_grad}

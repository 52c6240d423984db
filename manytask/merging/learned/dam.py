"""DAM, defence-aware merging: a shared Concrete mask learned against synthesised triggers.

Yang, Tang, Zhu, Chen, Shen and Wu, "Mitigating the Backdoor Effect for Multi-Task Model
Merging via Safety-Aware Subspace" (ICLR 2025, arXiv 2410.13910; paper 326 of our reading
list). The paper's equations could not be read offline; this follows its authors' reference
implementation (``fusion_bench/method/concrete_subspace/clip_safe_concrete_adamerging.py``
in FusionBench, which the authors' repository ``Yangjinluan/DAM`` points to). There the
Task-Shared mask is a Concrete mask ``m`` over every parameter, shared by the tasks, and the
Backdoor-Detection part is a synthesised trigger: one input perturbation ``delta_t`` per task,
to whose effect the mask is trained to be insensitive. With task vectors ``tau_k``, merging
coefficients ``w`` (per task, or per task and tensor) and the mask rescaled to mean 1 in every
tensor, ``m~ = m / mean_tensor(m)``:

    theta(w, m) = theta_0 + sum_k w_k (.) m~ (.) tau_k.

Each of ``steps`` meta-steps, with one unlabelled batch ``x_t`` per task ``t`` for each
stage (``H``: mean prediction entropy of task ``t``'s head, ``CE``: cross-entropy):

1. draw ``m ~ RelaxedBernoulli(sigmoid(logits), temperature)``;
2. inner step: ``w`` restarts at ``w_0`` (``init``) and takes one Adam step (``base_lr``)
   on ``sum_t H(f_t(x_t; theta(w, m)))``, the mask held fixed;
3. trigger step: with ``theta(w', m)`` fixed, one Adam step (``adv_lr``) for the ``delta_t``
   on ``sum_t -CE(f_t(x_t + delta_t), argmax f_t(x_t))`` (the perturbation that most changes
   the merged model's predictions);
4. mask step: one Adam step (``lr``) for the logits on
   ``sum_t H(f_t(x_t)) + adv_weight H(f_t(clip(x_t + delta_t)))`` through ``theta(w', m)``
   (``clip`` to ``input_range`` when given; the authors clip images to [0, 1]).

``perturb_where`` (ours, default everywhere) is a 0/1 tensor broadcast over one input that
says where the perturbation may act, for inputs that carry channels a trigger cannot touch
(an attention mask packed with the hidden states, say): ``delta_t`` is multiplied by it.

Then a final mask is drawn (``eval_mask``: a ``"continuous"`` Concrete sample as the
authors' default, or a ``"discrete"`` Bernoulli one), rescaled, and ``w`` is learned from
``w_0`` by AdaMerging (``adamerging_steps`` Adam steps at ``adamerging_lr`` on the summed
entropy). Defaults are the authors' (``init 0.3``, logits 0, temperature 0.5, ``lr 1e-3``,
``base_lr 1``, ``adv_lr 1e-4``, ``adv_weight 0.1``, ``adamerging_lr 1e-3``); their 1000 +
1000 steps are ours to choose per use (default 100 + 100). One departure, ours: the authors'
loop lets the mask step's gradient with respect to ``w`` leak into the next inner step (it is
never cleared); here each inner step sees only its own gradient. Draws come from a seeded
generator. Memory bound: K + 3 copies of the encoder's parameters (task vectors, logits,
mask, merged weights) plus one perturbation per task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle
from .concrete import concrete_mask
from .taskvectors import TaskVectors, check_learning, prediction_entropy


@dataclass
class DAMResult:
    """The merged state dict, the final rescaled mask ``m~`` (flat, in the encoder's
    parameter order), the logits, the coefficients, the per-task perturbations and the
    losses of each stage per meta-step."""

    state_dict: dict[str, Tensor]
    mask: Tensor
    logits: Tensor
    coefficients: Tensor
    perturbations: list[Tensor]  # one per task, shaped like one of its inputs
    trace: dict[str, list[float]] = field(default_factory=dict)


def rescaled(mask: Tensor, block_of: Tensor, blocks: int) -> Tensor:
    """``m / mean(m)`` within every tensor (block) of the flat ``mask``."""
    sums = torch.zeros(blocks, dtype=mask.dtype).index_add(0, block_of, mask)
    counts = torch.bincount(block_of, minlength=blocks).to(mask.dtype)
    return mask / (sums / counts)[block_of]


def masked_merge(vectors: TaskVectors, coef: Tensor, mask: Tensor) -> Tensor:
    """``theta_0 + sum_k w_k (.) m~ (.) tau_k`` (``coef``: (K,) or (K, tensors))."""
    full = coef[:, vectors.block_of] if coef.dim() == 2 else coef[:, None]
    return vectors.base + mask * (full * vectors.taus).sum(0)


def _entropy(vectors: TaskVectors, flat: Tensor, heads: Sequence[nn.Module],
             inputs: Sequence[Tensor]) -> Tensor:
    return sum((prediction_entropy(h(vectors.forward(flat, x)))
                for h, x in zip(heads, inputs, strict=True)), torch.zeros(()))


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr)


class _Stages:
    """The four stages of a meta-step, sharing the task vectors, heads and batches."""

    def __init__(self, vectors: TaskVectors, heads: Sequence[nn.Module],
                 cycles: Sequence[BatchCycle], input_range: tuple[float, float] | None,
                 where: Tensor | None):
        self.vectors, self.heads, self.cycles, self.input_range = (vectors, heads, cycles,
                                                                   input_range)
        self.where = where

    def shift(self, delta: Tensor) -> Tensor:
        return delta if self.where is None else delta * self.where

    def batches(self) -> list[Tensor]:
        return [c.next_input() for c in self.cycles]

    def inner(self, w: Tensor, w0: Tensor, mask: Tensor, opt: torch.optim.Adam) -> float:
        with torch.no_grad():
            w.copy_(w0)
        loss = _entropy(self.vectors, masked_merge(self.vectors, w, mask.detach()), self.heads,
                        self.batches())
        (w.grad,) = torch.autograd.grad(loss, [w])
        opt.step()
        return float(loss.detach())

    def zero_perturbations(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        return [torch.zeros(x.shape[1:], dtype=self.vectors.base.dtype, requires_grad=True)
                for x in inputs]

    def trigger(self, flat: Tensor, delta: list[Tensor], opt: torch.optim.Adam,
                inputs: Sequence[Tensor]) -> float:
        loss = torch.zeros(())
        for t, (head, x) in enumerate(zip(self.heads, inputs, strict=True)):
            moved = x + self.shift(delta[t])
            both = head(self.vectors.forward(flat.detach(), torch.cat([x, moved])))
            clean, moved = both[: len(x)], both[len(x):]
            loss = loss - nn.functional.cross_entropy(moved, clean.argmax(-1))
        for d, g in zip(delta, torch.autograd.grad(loss, delta), strict=True):
            d.grad = g
        opt.step()
        return float(loss.detach())

    def mask_step(self, flat: Tensor, delta: list[Tensor], logits: Tensor, adv_weight: float,
                  opt: torch.optim.Adam) -> float:
        loss = torch.zeros(())
        for t, (head, x) in enumerate(zip(self.heads, self.batches(), strict=True)):
            moved = x + self.shift(delta[t].detach())
            if self.input_range is not None:
                moved = moved.clamp(*self.input_range)
            both = head(self.vectors.forward(flat, torch.cat([x, moved])))
            loss = loss + prediction_entropy(both[: len(x)]) + adv_weight * prediction_entropy(
                both[len(x):])
        (logits.grad,) = torch.autograd.grad(loss, [logits])
        opt.step()
        return float(loss.detach())


def dam(
    encoder: nn.Module,
    task_state_dicts: Sequence[Mapping[str, Tensor]],
    heads: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    granularity: str = "layer",
    steps: int = 100,
    adamerging_steps: int = 100,
    init: float = 0.3,
    init_logit: float = 0.0,
    temperature: float = 0.5,
    lr: float = 1e-3,
    base_lr: float = 1.0,
    adv_lr: float = 1e-4,
    adv_weight: float = 0.1,
    adamerging_lr: float = 1e-3,
    eval_mask: str = "continuous",
    input_range: tuple[float, float] | None = None,
    perturb_where: Tensor | None = None,
    seed: int = 0,
) -> DAMResult:
    """Defence-aware merging (module docstring). ``loaders[t]`` yield task ``t``'s unlabelled
    inputs (or tuples whose first item is the input); ``heads[t]`` its frozen head."""
    where = "dam"
    check_learning(where, len(task_state_dicts), heads, loaders, steps=steps, lr=lr)
    check_learning(where, len(task_state_dicts), heads, loaders, steps=adamerging_steps,
                   lr=adamerging_lr)
    if not (temperature > 0 and base_lr > 0 and adv_lr > 0 and adv_weight >= 0):
        raise ValueError(f"{where}: needs temperature, base_lr, adv_lr > 0 and adv_weight "
                         f">= 0; got {temperature!r}, {base_lr!r}, {adv_lr!r}, {adv_weight!r}")
    if eval_mask not in ("continuous", "discrete"):
        raise ValueError(f"{where}: eval_mask must be 'continuous' or 'discrete', got "
                         f"{eval_mask!r}")
    vectors = TaskVectors(encoder, task_state_dicts, where)
    blocks = len(vectors.block_names)
    gen = torch.Generator().manual_seed(seed)
    cycles = [BatchCycle(loader, f"loaders[{i}]", where) for i, loader in enumerate(loaders)]
    stages = _Stages(vectors, heads, cycles, input_range,
                     None if perturb_where is None else perturb_where.to(vectors.base.dtype))
    w0 = torch.full(vectors.coefficient_shape(granularity), float(init),
                    dtype=vectors.base.dtype)
    w = w0.clone().requires_grad_(True)
    logits = torch.full_like(vectors.base, float(init_logit), requires_grad=True)
    delta: list[Tensor] = []  # one perturbation per task, shaped by its first batch
    inner_opt, mask_opt = _adam([w], base_lr), _adam([logits], lr)
    trigger_opt = None
    trace: dict[str, list[float]] = {"inner": [], "trigger": [], "mask": [], "adamerging": []}
    for _ in range(steps):
        mask = rescaled(concrete_mask(logits, temperature, gen), vectors.block_of, blocks)
        trace["inner"].append(stages.inner(w, w0, mask, inner_opt))
        flat = masked_merge(vectors, w.detach(), mask)
        inputs = stages.batches()
        if trigger_opt is None:
            delta = stages.zero_perturbations(inputs)
            trigger_opt = _adam(delta, adv_lr)
        trace["trigger"].append(stages.trigger(flat, delta, trigger_opt, inputs))
        trace["mask"].append(stages.mask_step(flat, delta, logits, adv_weight, mask_opt))
    with torch.no_grad():
        if eval_mask == "continuous":
            final = concrete_mask(logits.detach(), temperature, gen)
        else:
            final = torch.bernoulli(torch.sigmoid(logits.detach()), generator=gen)
        final = rescaled(final, vectors.block_of, blocks)
    if not bool(torch.isfinite(final).all()):
        raise FloatingPointError(f"{where}: a tensor's final mask is all zeros, so its "
                                 "rescaling m / mean(m) is undefined")
    coef = w0.clone().requires_grad_(True)
    ada_opt = _adam([coef], adamerging_lr)
    for _ in range(adamerging_steps):
        loss = _entropy(vectors, masked_merge(vectors, coef, final), heads, stages.batches())
        trace["adamerging"].append(float(loss.detach()))
        (coef.grad,) = torch.autograd.grad(loss, [coef])
        ada_opt.step()
    merged = masked_merge(vectors, coef.detach(), final)
    return DAMResult(vectors.state_dict(merged), final, logits.detach().clone(),
                     coef.detach().clone(), [d.detach().clone() for d in delta], trace)

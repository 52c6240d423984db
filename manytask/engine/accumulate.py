"""Gradient accumulation that frees each micro-batch's graph, for every method.

One optimiser step on micro-batches ``m = 1..N`` must equal one step on their union. A task's
loss on the union is the labelled-count-weighted mean ``L_k = sum_m (n_mk / n_k) L_mk``, so
everything a method decides on is a sum over micro-batches:

* the loss values ``L_k``;
* in exact mode, the per-task gradients w.r.t. the shared parameters
  ``J_k = sum_m (n_mk / n_k) dL_mk/dtheta`` (linear in the losses), hence the Gramian
  ``J J^T`` and any Jacobian aggregator's input; each head's own gradient likewise;
* in feature mode, the per-task feature gradients: micro-batch ``m``'s features ``z_m`` are
  disjoint from the others', so ``dL_k/dz_m = (n_mk / n_k) dL_mk/dz_m`` and the feature
  Gramian is the sum of the micro-batches' Gramians.

:class:`Accumulation` collects these from one micro-batch at a time (:meth:`Accumulation.add`,
after which the caller drops the graph), then hands :func:`manytask.backward` **surrogate
losses** (:meth:`Accumulation.surrogate`): ``S_k = L_k + <J_k, theta - sg(theta)> + <H_k, h -
sg(h)>`` in exact mode (``sg``: stop-gradient, so the added terms are zero-valued), with
``H_k`` the accumulated gradient of task ``k``'s head parameters ``h``; in feature mode the
inner product is with a zero-valued leaf ``F_m`` standing for each micro-batch's features;
for a loss-level decision ``S_k`` is a leaf holding ``L_k``. ``S_k`` has the union's value and
exactly the union's per-task gradients, so the unchanged pipeline (gather across processes,
fp16 unscaling, the decision, the method's own parameters' gradients, ``head_grad``, the
heads' and shared part's updates) sees the large batch. What it writes into the shared
parameters and heads is final in exact mode; what lands on ``F_m`` (feature mode) or on the
leaves ``S_k`` (loss level: ``dObjective/dL_k``) is pushed into each micro-batch's graph by the
caller in a second forward of that micro-batch (:meth:`Accumulation.feature_updates`,
:meth:`Accumulation.loss_weights`), with the same random draws.

The per-task feature and head gradients are taken as :func:`~.gradients.task_gradients` takes
them; a model whose heads are not separable from the trunk (a head reading a trunk
parameter, one feature tensor computed from another) or, in exact mode, whose trunk has
trainable parameters outside ``shared_params`` raises :class:`NotSeparable` from
:meth:`Accumulation.add` (the caller keeps the graphs instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from .gradients import Features, _leaves_below, feature_gradients, feature_tensors, head_leaves
from .gradients import jacobian as shared_jacobian

Kind = Literal["losses", "exact", "feature"]


class NotSeparable(RuntimeError):
    """A micro-batch's per-task gradients cannot be split into trunk and heads (see module)."""


class HeadSums:
    """Per task, the running sum of ``n_mk`` times its gradient w.r.t. each head leaf."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}

    def add(self, task: str, pairs: Sequence[tuple[Tensor, Tensor]], n: int) -> None:
        own = self.sums.setdefault(task, {})
        for leaf, grad in pairs:
            seen = own.get(id(leaf))
            g = grad.detach() * n
            own[id(leaf)] = (leaf, g if seen is None else seen[1] + g)

    def term(self, task: str, total: int) -> Tensor | None:
        """``<H_k, h - sg(h)>`` with ``H_k`` the sum divided by ``n_k``: zero-valued."""
        parts = [((g / total).to(leaf.dtype) * (leaf - leaf.detach())).sum()
                 for leaf, g in self.sums.get(task, {}).values()]
        return torch.stack(parts).sum() if parts else None


class Accumulation:
    """The per-task information of micro-batches added one at a time (see the module).

    Args:
        kind: ``"losses"`` (only the loss values: a loss-level decision, or a gradient-level
            method whose schedule reuses its weights), ``"exact"`` or ``"feature"``.
        shared_params: the shared parameters (exact mode).
    """

    def __init__(self, kind: Kind, shared_params: Sequence[Tensor] | None = None) -> None:
        if kind == "exact" and not shared_params:
            raise ValueError("mode='exact' needs shared_params (the parameters of the shared part)")
        self.kind: Kind = kind
        self.params = [p for p in shared_params or () if p.requires_grad]
        self.values: dict[str, Tensor] = {}  # sum_m n_mk L_mk (detached)
        self.counts: dict[str, int] = {}  # n_k
        self.per_micro: list[dict[str, int]] = []  # n_mk
        self.blocks: dict[str, list[Tensor]] = {}  # exact: sum_m n_mk dL_mk/dtheta
        self.heads = HeadSums()
        # feature mode: per micro-batch, per feature tensor, {task: n_mk dL_mk/dz_m}
        self.feature_grads: list[list[dict[str, Tensor]]] = []
        self.leaves: list[list[Tensor]] = []  # feature mode: the zero-valued F_m
        self.proxies: dict[str, Tensor] = {}  # loss level: the leaves S_k
        # exact mode: the shared parameters some micro-batch's features depend on (the others
        # get no gradient, not a zero one, as from one backward of the union)
        self.reached: set[int] = set()

    def add(self, losses: Mapping[str, Tensor], features: Features | None,
            counts: Mapping[str, int]) -> None:
        """Take micro-batch ``m``'s losses (means over its ``counts`` labelled samples) and, for
        the gradient kinds, their per-task gradients; the caller may then free its graph."""
        self.per_micro.append({t: int(counts[t]) for t in losses})
        for task, loss in losses.items():
            n = int(counts[task])
            value = loss.detach() * n
            self.values[task] = value if task not in self.values else self.values[task] + value
            self.counts[task] = self.counts.get(task, 0) + n
        if self.kind == "losses":
            return
        feats = feature_tensors(features) if features is not None else []
        if not feats:
            raise ValueError("gradient accumulation for task gradients needs features")
        if self.kind == "feature":
            self.leaves.append([torch.zeros_like(f, requires_grad=True) for f in feats])
            self.feature_grads.append([{} for _ in feats])
        if not losses:
            return
        names, ls = list(losses), list(losses.values())
        heads = head_leaves(ls, feats)
        if heads is None:
            raise NotSeparable("a head reads a trunk parameter, or one feature tensor is "
                               "computed from another")
        fgrads, own = feature_gradients(ls, feats, heads)
        assert own is not None
        for k, task in enumerate(names):
            self.heads.add(task, own[k], int(counts[task]))
        if self.kind == "feature":
            for i, g in enumerate(fgrads):
                for k, task in enumerate(names):
                    self.feature_grads[-1][i][task] = g[k].detach() * int(counts[task])
            return
        self.check_trunk(feats)
        blocks = shared_jacobian(feats, fgrads, self.params)
        for k, task in enumerate(names):
            n = int(counts[task])
            sums = self.blocks.get(task)
            if sums is None:
                self.blocks[task] = [b[k].detach() * n for b in blocks]
            else:  # in place: one K x D accumulator, whatever N
                for total, b in zip(sums, blocks, strict=True):
                    total.add_(b[k].detach(), alpha=n)

    def check_trunk(self, feats: list[Tensor]) -> None:
        """Exact mode: every trainable leaf below the features is a shared parameter."""
        stop = {f.grad_fn for f in feats if f.grad_fn is not None}
        below = [c for node in stop for c, _ in node.next_functions]
        trunk, _ = _leaves_below(below, stop, feats)
        shared = {id(p) for p in self.params}
        if any(leaf.requires_grad and id(leaf) not in shared for leaf in trunk):
            raise NotSeparable("the trunk has trainable parameters outside shared_params")
        self.reached |= {id(leaf) for leaf in trunk}

    def surrogate(
        self, order: Sequence[str]
    ) -> tuple[dict[str, Tensor], list[Tensor] | None, dict[str, int]]:
        """``(losses, features, counts)`` to pass to :func:`manytask.backward`: the surrogate
        ``S_k`` of each task labelled in some micro-batch, in ``order``; the feature tensors
        (``None`` for the ``"losses"`` kind); the labelled counts ``n_k``."""
        tasks = [t for t in order if t in self.counts]
        means = {t: self.values[t] / self.counts[t] for t in tasks}
        if self.kind == "losses":
            self.proxies = {t: means[t].clone().requires_grad_(True) for t in tasks}
            return dict(self.proxies), None, {t: self.counts[t] for t in tasks}
        features, trunk = (self.feature_terms(tasks) if self.kind == "feature"
                           else self.shared_terms(tasks))
        out = {}
        for t in tasks:
            terms = [x for x in (trunk.get(t), self.heads.term(t, self.counts[t]))
                     if x is not None]
            value = means[t]
            out[t] = value + torch.stack(terms).sum().to(value.dtype) if terms else value
        return out, features, {t: self.counts[t] for t in tasks}

    def feature_terms(self, tasks: list[str]) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Feature mode: ``sum_m <(n_mk / n_k) dL_mk/dz_m, F_m>`` with ``F_m`` zero leaves."""
        features = [leaf for leaves in self.leaves for leaf in leaves]
        flat = [g for grads in self.feature_grads for g in grads]
        terms = {}
        for t in tasks:
            parts = [(g[t].div_(self.counts[t]).to(x.dtype) * x).sum()  # in place: no copy
                     for g, x in zip(flat, features, strict=True) if t in g]
            if parts:
                terms[t] = torch.stack(parts).sum()
        return features, terms

    def shared_terms(self, tasks: list[str]) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Exact mode: ``z = J (theta - sg(theta))`` (one zero value per task) as the
        features, ``S_k`` reading ``z_k``, so that ``dS_k/dtheta = J_k`` exactly."""
        rows = [t for t in tasks if t in self.blocks]
        used = [j for j, p in enumerate(self.params) if id(p) in self.reached]
        if not rows or not used:  # no labelled task here: a zero feature to push into
            delta = torch.stack([(p - p.detach()).sum() * 0 for p in self.params]).sum()
            return [delta.reshape(1)], {}
        deltas = {j: (self.params[j] - self.params[j].detach()).reshape(-1) for j in used}
        # J_k = the sums divided by n_k in place (the graph saves them: no second K x D copy)
        z = torch.stack([
            torch.stack([torch.dot(self.blocks[t][j].div_(self.counts[t]).reshape(-1)
                                   .to(deltas[j].dtype), deltas[j]) for j in used]).sum()
            for t in rows
        ])
        return [z], {t: z[i] for i, t in enumerate(rows)}

    def finite(self) -> bool:
        """Whether every accumulated gradient is finite (fp16: no overflow)."""
        tensors = [b for blocks in self.blocks.values() for b in blocks]
        tensors += [g for grads in self.feature_grads for d in grads for g in d.values()]
        tensors += [g for own in self.heads.sums.values() for _, g in own.values()]
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def feature_updates(self, m: int) -> list[Tensor]:
        """Feature mode, after the backward: what to push into micro-batch ``m``'s features."""
        return [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                for leaf in self.leaves[m]]

    def loss_weights(self, m: int) -> dict[str, float]:
        """Loss level, after the backward: ``dObjective/dL_k * n_mk / n_k`` for micro-batch
        ``m``'s tasks, the coefficient of its loss ``L_mk`` in the union's objective. A task
        the objective did not reach is left out; one it reached with a zero coefficient is
        kept (its head then gets a zero gradient, not none: optimisers such as Adam still
        move a parameter whose gradient is zero)."""
        out = {}
        for task, n in self.per_micro[m].items():
            grad = self.proxies[task].grad
            if grad is not None:
                out[task] = float(grad) * n / self.counts[task]
        return out


__all__ = ["Accumulation", "Kind", "NotSeparable"]

"""Merging as adaptive projective gradient descent (Wei et al., ICML 2025, arXiv 2501.01230).

"Modeling Multi-Task Model Merging as Adaptive Projective Gradient Descent" (paper 325 of our
reading list; its authors call it DOGE). Data-free. The equations below are those of the
authors' reference implementation (``fusion_bench/method/doge_ta/doge_ta.py`` in Anke
Tang's FusionBench; the paper's equation numbers could not be read offline). For every
weight matrix ``l`` (out x in) with task vectors ``tau_j = W_j - W_0``, j = 1..K:

1. task-aware coefficients, the "adaptive learning rates": ``lambda_j = eta / ||tau_j||_F``;
2. the shared subspace: with ``r = min(out, in)`` and ``k = floor(r / K)``, the top ``k``
   left singular vectors of every ``tau_j`` are stacked (``k`` columns per task, zeros where
   ``K k < r``) and decomposed again; ``P = U_s U_s^T`` over its first ``floor(r / s)``
   left singular vectors (``s`` = ``subspace``);
3. a modification ``Delta`` (zeros at first) minimises the data-free gap between the merged
   and each individual model, reconstituted through the task vectors:

       L(Delta) = sum_j sum_rows ( sum_cols tau_j (.) (tau_j - sum_i lambda_i tau_i
                                                      - (sum_i lambda_i) Delta) )^2,

   by Adam (``lr``, ``steps`` steps per matrix) on the projected gradient
   ``g <- g - P g`` (updates leave the shared subspace, so shared knowledge is kept);
4. each task keeps the ``keep`` fraction of its largest-magnitude entries, ranked over all
   its processed matrices together: ``m_j = 1[|tau_j| >= t_j]`` with ``t_j`` the
   ``(d - floor(d keep))``-th smallest ``|tau_j|`` (``d`` entries; every entry when
   ``keep = 1``);
5. ``W = W_0 + sum_j lambda_j (tau_j + Delta) (.) m_j``.

Which tensors: the 2-D floating weights whose names contain none of ``skip`` (by default
embeddings, as the authors' code takes only the encoder's linear weights). Every other tensor
keeps the base's value, as in the authors' code; so does (our choice, where the authors'
``eta / ||tau||`` would divide by zero) a matrix no model changed, which is then also left
out of the masks' ranking. A matrix that some models changed and others did not is refused.
Defaults (``eta = 0.07``, ``subspace = 6``, ``keep = 0.3``, 400 Adam steps at ``lr = 1e-4``)
are the authors'. Memory bound: the K task vectors of all processed matrices (for the masks'
global ranking), plus the shared basis (out x r/s) of the matrix being optimised. Computed
in float32, or float64 for float64 inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdaGDResult:
    """The merged state dict, and per processed matrix the learned ``Delta`` and the data-free
    loss before and after its optimisation."""

    state_dict: dict[str, Tensor]
    deltas: dict[str, Tensor]
    loss_before: dict[str, float]
    loss_after: dict[str, float]


def task_coefficients(taus: Tensor, eta: float) -> Tensor:
    """``lambda_j = eta / ||tau_j||_F`` for a stack ``taus`` (K, out, in)."""
    norms = taus.flatten(1).norm(dim=1)
    return eta / norms


def shared_basis(taus: Tensor, subspace: float) -> Tensor:
    """``U_s`` (out x floor(r / s)), the orthonormal basis of the shared subspace (step 2)."""
    k_tasks, out, inp = taus.shape
    r = min(out, inp)
    per_task = r // k_tasks
    stacked = torch.zeros(out, r, dtype=taus.dtype)
    for j in range(k_tasks):
        u = torch.linalg.svd(taus[j], full_matrices=False)[0]
        stacked[:, j * per_task:(j + 1) * per_task] = u[:, :per_task]
    return torch.linalg.svd(stacked, full_matrices=False)[0][:, : int(r / subspace)]


def shared_projection(taus: Tensor, subspace: float) -> Tensor:
    """The out x out projection ``P = U_s U_s^T`` onto the shared subspace of step 2."""
    u_s = shared_basis(taus, subspace)
    return u_s @ u_s.T


def gap_loss(taus: Tensor, lam: Tensor, delta: Tensor) -> Tensor:
    """``L(Delta)`` of step 3."""
    merged_gap = (lam.view(-1, 1, 1) * taus).sum(0) + lam.sum() * delta
    rows = (taus * (taus - merged_gap)).sum(dim=2)  # (K, out)
    return rows.pow(2).sum()


def optimise_delta(taus: Tensor, lam: Tensor, basis: Tensor, *, steps: int,
                   lr: float) -> Tensor:
    """Adam on ``L`` with every gradient projected out of the shared subspace (step 3):
    ``g - U_s (U_s^T g)``, which is ``g - P g`` without forming the out x out ``P``."""
    delta = torch.zeros_like(taus[0], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        gap_loss(taus, lam, delta).backward()
        assert delta.grad is not None
        delta.grad.sub_(basis @ (basis.T @ delta.grad))
        opt.step()
    return delta.detach()


def keep_masks(taus: Sequence[Tensor], keep: float) -> list[Tensor]:
    """Step 4 for one task: the masks of its matrices ``taus``, ranked together."""
    if not taus:
        return []
    flat = torch.cat([t.reshape(-1) for t in taus]).abs()
    d = flat.numel()
    k = d - int(d * keep)
    if k <= 0:
        return [torch.ones_like(t, dtype=torch.bool) for t in taus]
    threshold = flat.kthvalue(k).values
    return [t.abs() >= threshold for t in taus]


def _compute(w: Tensor) -> torch.dtype:
    return torch.promote_types(w.dtype, torch.float32)


def _check(base: Mapping[str, Tensor], finetuned: Sequence[Mapping[str, Tensor]], *,
           eta: float, subspace: float, keep: float, steps: int, lr: float) -> None:
    where = "adagd_merge"
    if len(finetuned) < 1:
        raise ValueError(f"{where}: needs at least one fine-tuned state dict")
    if not eta > 0 or not subspace >= 1 or not 0.0 < keep <= 1.0:
        raise ValueError(f"{where}: needs eta > 0, subspace >= 1 and keep in (0, 1]; got "
                         f"eta={eta!r}, subspace={subspace!r}, keep={keep!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0 or not lr > 0:
        raise ValueError(f"{where}: steps must be a non-negative integer and lr > 0; got "
                         f"steps={steps!r}, lr={lr!r}")
    for i, sd in enumerate(finetuned):
        for name, w0 in base.items():
            if name not in sd or sd[name].shape != w0.shape:
                raise ValueError(f"{where}: model {i} lacks {name!r} or has another shape")


def adagd_merge(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    *,
    eta: float = 0.07,
    subspace: float = 6.0,
    keep: float = 0.3,
    steps: int = 400,
    lr: float = 1e-4,
    skip: Sequence[str] = ("embed",),
) -> AdaGDResult:
    """Merge state dicts by adaptive projective gradient descent (module docstring)."""
    _check(base, finetuned, eta=eta, subspace=subspace, keep=keep, steps=steps, lr=lr)
    names = [n for n, w in base.items() if w.dim() == 2 and w.is_floating_point()
             and not any(s in n for s in skip)]
    # float32 at least (the authors' precision); float64 inputs stay float64
    taus = {n: torch.stack([sd[n].to(_compute(base[n])) - base[n].to(_compute(base[n]))
                            for sd in finetuned]) for n in names}
    taus = {n: t for n, t in taus.items() if bool(t.ne(0).any())}  # unchanged: the base's
    names = list(taus)
    deltas, lams, before, after = {}, {}, {}, {}
    for n in names:
        if not bool(torch.isfinite(taus[n]).all()):
            raise ValueError(f"adagd_merge: a task vector of {n!r} holds NaN or inf")
        lams[n] = task_coefficients(taus[n], eta)
        if not bool(torch.isfinite(lams[n]).all()):
            raise ValueError(f"adagd_merge: a task vector of {n!r} is zero, so its "
                             "coefficient eta / ||tau|| is undefined")
        basis = shared_basis(taus[n], subspace)
        zero = torch.zeros_like(taus[n][0])
        deltas[n] = optimise_delta(taus[n], lams[n], basis, steps=steps, lr=lr)
        before[n] = float(gap_loss(taus[n], lams[n], zero))
        after[n] = float(gap_loss(taus[n], lams[n], deltas[n]))
    masks = {n: [] for n in names}  # type: dict[str, list[Tensor]]
    for j in range(len(finetuned)):
        for n, m in zip(names, keep_masks([taus[n][j] for n in names], keep), strict=True):
            masks[n].append(m)
    out = {}
    for name, w0 in base.items():
        if name not in taus:
            out[name] = w0.clone()
            continue
        update = sum(lams[name][j] * (taus[name][j] + deltas[name]) * masks[name][j]
                     for j in range(len(finetuned)))
        merged = (w0.to(_compute(w0)) + update).to(w0.dtype)
        if not bool(torch.isfinite(merged).all()):
            raise FloatingPointError(f"adagd_merge: merged {name!r} is not finite")
        out[name] = merged
    return AdaGDResult(out, {n: d.to(base[n].dtype) for n, d in deltas.items()}, before, after)

"""STF: merged linear layers that superpose each model's task-specific features.

"Superpose Task-specific Features for Model Merging" (2025; paper 263 of our reading list):
under the linear-representation hypothesis a linear layer's behaviour on a task is its
response to that task's feature directions, so the merged weight is the solution of a linear
system asking it to reproduce every fine-tuned layer's response on its own task's features:

    find W  with  W X_k = W_k X_k  for every task k,

solved in the least-squares, minimum-change sense: ``W = W_0 + Delta``, ``Delta X = Y``
with ``X = [X_1 ... X_K]``, ``Y = [(W_1 - W_0) X_1 ... (W_K - W_0) X_K]``, i.e.
``Delta = Y X^+`` (the minimum-norm change, so directions no task uses keep the base
weights).

The task's feature directions ``X_k`` are either given (calibration inputs of the layer, one
column per example) or derived from the weights alone: the top right singular vectors of the
task's weight change ``W_k - W_0`` that hold ``energy`` of its squared Frobenius norm (the input
directions the fine-tuning changed). When the tasks' directions are mutually orthogonal the
system is solved exactly and every model's features are reproduced.

Tensors that are not 2-D weight matrices (biases, norms, embeddings named in ``skip``) are
merged by task arithmetic with ``scale`` (default ``1/K``, the task-vector mean): our choice,
since the linear system concerns linear maps. Memory bound: the base plus the K task vectors
of one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def feature_directions(delta: Tensor, energy: float = 0.99) -> Tensor:
    """Right singular vectors of ``delta`` (out x in) holding ``energy`` of its squared norm."""
    _, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    power = s**2
    total = float(power.sum())
    if total == 0.0:
        return vh[:0].T
    rank = int(torch.searchsorted(torch.cumsum(power, 0) / total,
                                  torch.tensor(energy, dtype=power.dtype))) + 1
    return vh[: min(rank, len(s))].T


def stf_layer(base: Tensor, finetuned: Sequence[Tensor], features: Sequence[Tensor]) -> Tensor:
    """``W_0 + Y X^+`` for one weight matrix (see the module docstring)."""
    x = torch.cat([f.double() for f in features], dim=1)
    if x.shape[1] == 0:
        return base.clone()
    y = torch.cat([(w.double() - base.double()) @ f.double()
                   for w, f in zip(finetuned, features, strict=True)], dim=1)
    delta = torch.linalg.lstsq(x.T, y.T, driver="gelsd").solution.T
    return (base.double() + delta).to(base.dtype)


def stf_merge(
    base: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    *,
    calibration: Mapping[str, Sequence[Tensor]] | None = None,
    energy: float = 0.99,
    scale: float | None = None,
    skip: Sequence[str] = (),
) -> dict[str, Tensor]:
    """Merge state dicts with STF (module docstring). ``calibration[name][k]`` gives task k's
    inputs of weight ``name`` as an (in x n) matrix; otherwise directions come from weights."""
    if not finetuned:
        raise ValueError("stf_merge: needs at least one fine-tuned state dict")
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"stf_merge: energy must be in (0, 1], got {energy!r}")
    k = len(finetuned)
    lam = 1.0 / k if scale is None else float(scale)
    out = {}
    for name, w0 in base.items():
        models = []
        for i, sd in enumerate(finetuned):
            if name not in sd or sd[name].shape != w0.shape:
                raise ValueError(f"stf_merge: model {i} lacks {name!r} or has another shape")
            models.append(sd[name])
        if w0.dim() == 2 and w0.is_floating_point() and name not in skip:
            if calibration is not None and name in calibration:
                feats = [f.to(torch.float64) for f in calibration[name]]
                if len(feats) != k or any(f.shape[0] != w0.shape[1] for f in feats):
                    raise ValueError(f"stf_merge: calibration[{name!r}] needs {k} matrices "
                                     f"with {w0.shape[1]} rows")
            else:
                feats = [feature_directions(m.double() - w0.double(), energy) for m in models]
            out[name] = stf_layer(w0, models, feats)
        elif w0.is_floating_point():
            out[name] = w0 + lam * sum(m - w0 for m in models)
        else:
            out[name] = w0.clone()
        if out[name].is_floating_point() and not bool(torch.isfinite(out[name]).all()):
            raise FloatingPointError(f"stf_merge: merged {name!r} is not finite")
    return out

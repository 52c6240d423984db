"""Data-aware merges of in-memory models: Fisher merging and RegMean.

Both read a few batches per task (``max_batches``, counted and reported) and return a merged
state dict for models of one architecture. Batches are ``(inputs, targets)`` pairs (Fisher) or
inputs, or ``(inputs, ...)`` tuples whose first item is the input (RegMean).

* :func:`fisher_merge` (Matena and Raffel, 2022, "Merging Models with Fisher Weighting",
  Sec. 2, the diagonal-Fisher weighted average):
  ``theta_j = sum_i w_i F_ij theta_ij / sum_i w_i F_ij`` with the diagonal Fisher
  ``F_i = mean over samples of (d log p(y | x; theta_i) / d theta)^2``. Per-sample gradients
  come from one vectorised ``torch.func.vmap(grad(...))`` per batch, not a loop over samples.
  ``fisher="empirical"`` uses the data's labels; ``"sampled"`` draws ``y`` from the model's
  own prediction (the Fisher's definition; one sample per input).
* :func:`regmean_merge` (Jin et al., 2023, "Dataless Knowledge Fusion by Merging Weights of
  Language Models", Sec. 3, the closed-form solution for linear layers): for every
  ``nn.Linear``, ``W = (sum_i G_i)^-1 sum_i G_i W_i`` (in the ``x W^T`` orientation) with
  ``G_i = X_i^T X_i`` the Gram matrix of that layer's inputs on task ``i``; ``alpha < 1``
  scales the off-diagonal entries of each ``G_i`` (the paper's regularisation). Every other
  parameter and buffer is averaged, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class DataAwareResult:
    """The merged state dict and how many batches were read from each task's loader."""

    state_dict: dict[str, Tensor]
    batches_read: list[int]


def _check_models(models: Sequence[nn.Module], loaders: Sequence[Any], where: str) -> None:
    if len(models) < 2:
        raise ValueError(f"{where}: needs at least 2 models, got {len(models)}")
    if len(loaders) != len(models):
        raise ValueError(f"{where}: {len(loaders)} loaders for {len(models)} models")
    keys = list(models[0].state_dict())
    for i, m in enumerate(models[1:], 1):
        other = m.state_dict()
        if list(other) != keys:
            raise ValueError(f"{where}: model {i} has different tensor names than model 0")
        for k in keys:
            if other[k].shape != models[0].state_dict()[k].shape:
                raise ValueError(
                    f"{where}: tensor {k!r} has shape {tuple(other[k].shape)} in model {i}, "
                    f"{tuple(models[0].state_dict()[k].shape)} in model 0"
                )


def _check_batches(max_batches: int, where: str) -> None:
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"{where}: max_batches must be a positive integer, got {max_batches!r}")


def _weights(weights: Sequence[float] | None, k: int, where: str) -> list[float]:
    if weights is None:
        return [1.0] * k
    if len(weights) != k or any(not (w >= 0) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{where}: weights must be {k} non-negative numbers with a positive "
                         f"sum, got {list(weights)}")
    return [float(w) for w in weights]


def classification_log_likelihood(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``log p(y | x)`` of logits ``outputs`` (N, C) for class indices ``targets``."""
    return -nn.functional.cross_entropy(outputs, targets, reduction="none")


def diagonal_fisher(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    max_batches: int,
    log_likelihood: Callable[[Tensor, Tensor], Tensor] = classification_log_likelihood,
    fisher: str = "empirical",
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Diagonal Fisher of each trainable parameter (mean over samples) and the batches read."""
    from torch.func import functional_call, grad, vmap

    if fisher not in ("empirical", "sampled"):
        raise ValueError(f"fisher must be 'empirical' or 'sampled', got {fisher!r}")
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def sample_ll(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return log_likelihood(out, y.unsqueeze(0)).sum()

    per_sample = vmap(grad(sample_ll), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    n = batches = 0
    for batch in loader:
        if batches == max_batches:
            break
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise TypeError("fisher_merge: each batch must be an (inputs, targets) pair")
        x, y = batch[0], batch[1]
        if fisher == "sampled":
            with torch.no_grad():
                logits = functional_call(model, (params, buffers), (x,))
                y = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        grads = per_sample(params, x, y)
        for k, g in grads.items():
            total[k] += g.square().sum(0)
        n += x.shape[0]
        batches += 1
    if n == 0:
        raise ValueError("fisher_merge: a loader yielded no batch")
    return {k: v / n for k, v in total.items()}, batches


def fisher_merge(
    models: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    max_batches: int,
    weights: Sequence[float] | None = None,
    log_likelihood: Callable[[Tensor, Tensor], Tensor] = classification_log_likelihood,
    fisher: str = "empirical",
    epsilon: float = 1e-8,
    seed: int = 0,
) -> DataAwareResult:
    """Fisher-weighted average of ``models`` (see the module docstring).

    ``epsilon`` is added to every Fisher so that parameters no task informs fall back to the
    (weighted) plain average instead of dividing by zero. Parameters without gradient and
    buffers are averaged with ``weights``.
    """
    where = "fisher_merge"
    _check_models(models, loaders, where)
    _check_batches(max_batches, where)
    ws = _weights(weights, len(models), where)
    if not epsilon > 0:
        raise ValueError(f"{where}: epsilon must be > 0, got {epsilon!r}")
    gen = torch.Generator().manual_seed(seed)
    fishers, counts = [], []
    for model, loader in zip(models, loaders, strict=True):
        f, b = diagonal_fisher(model, loader, max_batches=max_batches,
                               log_likelihood=log_likelihood, fisher=fisher, generator=gen)
        fishers.append(f)
        counts.append(b)
    states = [m.state_dict() for m in models]
    merged: dict[str, Tensor] = {}
    for k, ref in states[0].items():
        if not ref.is_floating_point():
            merged[k] = ref.clone()
            continue
        if k in fishers[0]:
            num = sum(w * (f[k] + epsilon) * s[k] for w, f, s in zip(ws, fishers, states,
                                                                      strict=True))
            den = sum(w * (f[k] + epsilon) for w, f in zip(ws, fishers, strict=True))
            merged[k] = num / den
        else:
            merged[k] = sum(w * s[k] for w, s in zip(ws, states, strict=True)) / sum(ws)
    return DataAwareResult(merged, counts)


def _linear_grams(
    model: nn.Module, loader: Iterable[Any], max_batches: int
) -> tuple[dict[str, Tensor], int]:
    """``X^T X`` of the inputs of every ``nn.Linear`` of ``model`` (float64)."""
    grams: dict[str, Tensor] = {}
    hooks = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            g = x.T @ x
            grams[name] = grams[name] + g if name in grams else g

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_pre_hook(hook_for(name)))
    batches = 0
    try:
        with torch.no_grad():
            for batch in loader:
                if batches == max_batches:
                    break
                x = batch[0] if isinstance(batch, list | tuple) else batch
                model(x)
                batches += 1
    finally:
        for h in hooks:
            h.remove()
    if batches == 0:
        raise ValueError("regmean_merge: a loader yielded no batch")
    return grams, batches


def regmean_merge(
    models: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    max_batches: int,
    alpha: float = 1.0,
) -> DataAwareResult:
    """RegMean (see the module docstring); ``alpha`` in [0, 1] scales off-diagonal Grams."""
    where = "regmean_merge"
    _check_models(models, loaders, where)
    _check_batches(max_batches, where)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(f"{where}: alpha must be in [0, 1], got {alpha!r}")
    grams, counts = [], []
    for model, loader in zip(models, loaders, strict=True):
        g, b = _linear_grams(model, loader, max_batches)
        grams.append(g)
        counts.append(b)
    states = [m.state_dict() for m in models]
    merged: dict[str, Tensor] = {}
    for k, ref in states[0].items():
        merged[k] = (ref.clone() if not ref.is_floating_point()
                     else sum(s[k] for s in states) / len(states))
    for name in grams[0]:
        key = f"{name}.weight" if name else "weight"
        total_g = torch.zeros_like(grams[0][name])
        total_gw = torch.zeros(grams[0][name].shape[0], states[0][key].shape[0],
                               dtype=torch.float64)
        for g, s in zip(grams, states, strict=True):
            gi = g[name]
            if alpha < 1:  # shrink the off-diagonal part towards the diagonal
                gi = alpha * gi + (1 - alpha) * torch.diag(torch.diagonal(gi))
            total_g += gi
            total_gw += gi @ s[key].double().T
        # Solve rather than invert; lstsq copes with inputs that never vary (singular Gram).
        solution = torch.linalg.lstsq(total_g, total_gw).solution
        merged[key] = solution.T.to(states[0][key].dtype)
    return DataAwareResult(merged, counts)

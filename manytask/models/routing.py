"""Which experts each task uses: usage shares, unused experts and identical experts.

``expert_report(model, x)`` runs one forward without gradients, reads the gate weights every
gated block recorded (:class:`~manytask.models.experts.Routed`) and the outputs of every
:class:`~manytask.models.experts.ExpertSet` (captured with forward hooks, so nothing is kept
on the training path), and reports:

* ``usage[gate][expert]``: the mean weight the gate gives the expert over the batch;
* ``unused``: experts that no gate gives more than ``min_share`` on average (a dead expert);
* ``identical``: pairs of experts of one set whose outputs on the batch differ by less than
  ``tol`` relative to their norm (collapsed experts, which waste capacity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .experts import ExpertSet, Routed


@dataclass
class ExpertReport:
    usage: dict[str, dict[str, float]]
    unused: list[str] = field(default_factory=list)
    identical: list[tuple[str, str]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.unused and not self.identical

    def messages(self) -> list[str]:
        """One line per problem found, for logs."""
        lines = [
            f"expert {e!r} is used by no gate (mean weight below threshold)" for e in self.unused
        ]
        lines += [f"experts {a!r} and {b!r} produce identical outputs" for a, b in self.identical]
        return lines


def expert_usage(model: nn.Module) -> dict[str, dict[str, float]]:
    """Mean gate weight per gate and expert, from the gates recorded by the last forward."""
    usage: dict[str, dict[str, float]] = {}
    for module in model.modules():
        if not isinstance(module, Routed):
            continue
        for gate, weights in module.last_gates.items():
            mean = weights.float().reshape(-1, weights.shape[-1]).mean(0).tolist()
            usage[gate] = dict(zip(module.gate_experts[gate], mean, strict=True))
    return usage


def _identical_pairs(names: tuple[str, ...], outputs: Tensor, tol: float) -> list[tuple[str, str]]:
    flat = outputs.reshape(outputs.shape[0], -1).double()
    dist = torch.cdist(flat, flat)
    norms = flat.norm(dim=1)
    scale = torch.maximum(norms[:, None], norms[None, :]).clamp_min(1e-12)
    close = torch.triu((dist / scale) < tol, diagonal=1).nonzero().tolist()
    return [(names[i], names[j]) for i, j in close]


@torch.no_grad()
def expert_report(
    model: nn.Module, x: Any, *, min_share: float = 0.01, tol: float = 1e-4
) -> ExpertReport:
    """Run ``model(x)`` and report expert usage, unused experts and identical experts.

    ``min_share`` is the mean gate weight below which an expert counts as unused by a gate;
    ``tol`` the relative output distance below which two experts count as identical.
    """
    if not 0.0 <= min_share < 1.0:
        raise ValueError(f"expert_report: min_share must lie in [0, 1), got {min_share!r}")
    if tol <= 0:
        raise ValueError(f"expert_report: tol must be positive, got {tol!r}")
    captured: list[tuple[ExpertSet, Tensor]] = []
    handles = [
        m.register_forward_hook(lambda mod, _inp, out: captured.append((mod, out)))
        for m in model.modules()
        if isinstance(m, ExpertSet)
    ]
    if not handles:
        raise ValueError(f"expert_report: {type(model).__name__} has no experts")
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    usage = expert_usage(model)
    best: dict[str, float] = {}
    for shares in usage.values():
        for expert, share in shares.items():
            best[expert] = max(best.get(expert, 0.0), share)
    identical: list[tuple[str, str]] = []
    all_names: list[str] = []
    for module, out in captured:
        all_names += module.names
        # Sparse layers may evaluate a subset; compare only full evaluations.
        if out.shape[0] == module.n_experts:
            identical += _identical_pairs(module.names, out, tol)
    # An expert that no gate routes to at all (not in ``best``) is not counted: only gated ones.
    unused = sorted({e for e in all_names if e in best and best[e] <= min_share})
    return ExpertReport(usage=usage, unused=unused, identical=identical)

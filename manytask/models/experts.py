"""Building blocks of the mixture-of-experts architectures: batched experts and recorded gates.

``ExpertSet`` evaluates ``E`` independent MLP experts with one batched matrix product per layer
(no Python loop over experts). Expert outputs use the layout ``(E, batch, width)``, so a gate's
mixture is one ``einsum``.

Every gated body derives from :class:`Routed`: on each forward it records, per gate, the
detached gate weights ``(batch, n_choices)`` in ``last_gates`` and, once, the names of the
experts the gate's columns refer to in ``gate_experts``. :func:`manytask.models.expert_report`
reads these to say which experts each task uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "identity": lambda t: t,
}


def check_positive(owner: str, **values: int) -> None:
    """Raise ``ValueError`` unless every value is a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def check_sizes(owner: str, name: str, sizes: Sequence[int], *, allow_empty: bool = False) -> None:
    if not sizes and not allow_empty:
        raise ValueError(f"{owner}: {name} needs at least one width, got {list(sizes)}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"{owner}: {name} must hold positive integers, got {list(sizes)}")


class ExpertSet(nn.Module):
    """``n_experts`` MLPs of the same shape ``sizes = [in, hidden..., out]``, run together.

    ``forward(x)`` takes ``x`` of shape ``(batch, in)`` (every expert reads the same input) or
    ``(E, batch, in)`` (expert ``e`` reads ``x[e]``) and returns ``(E, batch, out)``. With
    ``index`` (a 1-D long tensor), only the experts ``index`` are evaluated (sparse routing);
    the others' parameters are not read.

    Weights are initialised like ``nn.Linear`` (uniform in ``±1/sqrt(fan_in)``).
    """

    def __init__(
        self,
        n_experts: int,
        sizes: Sequence[int],
        *,
        activation: str = "relu",
        last_activation: bool = True,
        dropout: float = 0.0,
        name: str = "expert",
    ) -> None:
        super().__init__()
        check_positive("ExpertSet", n_experts=n_experts)
        check_sizes("ExpertSet", "sizes", sizes)
        if len(sizes) < 2:
            raise ValueError(
                f"ExpertSet: sizes needs an input and an output width, got {list(sizes)}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"ExpertSet: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ExpertSet: dropout must lie in [0, 1), got {dropout!r}")
        self.n_experts = n_experts
        self.sizes = tuple(sizes)
        self.activation = activation
        self.last_activation = last_activation
        self.dropout = dropout
        self.names = tuple(f"{name}/{i}" for i in range(n_experts))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in pairwise(sizes):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(n_experts, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_experts, 1, b).uniform_(-bound, bound)))

    @property
    def in_features(self) -> int:
        return self.sizes[0]

    @property
    def out_features(self) -> int:
        return self.sizes[-1]

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        act = ACTIVATIONS[self.activation]
        n_layers = len(self.weights)
        h = x
        for i in range(n_layers):
            w, b = self.weights[i], self.biases[i]
            if index is not None:
                w, b = w.index_select(0, index), b.index_select(0, index)
            e, fan_in, fan_out = w.shape
            if h.dim() == 2:
                # A shared input: one GEMM against all experts' weights side by side.
                flat = w.permute(1, 0, 2).reshape(fan_in, e * fan_out)
                h = (h @ flat).view(-1, e, fan_out).transpose(0, 1) + b
            else:
                h = torch.baddbmm(b, h, w)
            if i < n_layers - 1 or self.last_activation:
                h = act(h)
                if self.dropout > 0:
                    h = F.dropout(h, self.dropout, self.training)
        return h

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, sizes={list(self.sizes)}, activation={self.activation!r}"
        )


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """Gate mixture: ``weights (batch, E)`` or ``(G, batch, E)`` over ``experts (E, batch, d)``."""
    if weights.dim() == 2:
        return torch.einsum("be,ebd->bd", weights, experts)
    return torch.einsum("gbe,ebd->gbd", weights, experts)


class Routed(nn.Module):
    """A module with gates whose weights it records on every forward (see module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_gates: dict[str, Tensor] = {}
        self.gate_experts: dict[str, tuple[str, ...]] = {}

    def record(self, gate: str, weights: Tensor, experts: Sequence[str]) -> None:
        """Keep the (detached) weights of ``gate``, whose columns are the experts ``experts``."""
        self.last_gates[gate] = weights.detach()
        if gate not in self.gate_experts:
            self.gate_experts[gate] = tuple(experts)


class MaskedGates(nn.Module):
    """One softmax gate per name, each over an allowed subset of ``n_choices`` experts.

    Gate ``g`` computes ``softmax(W_g x_g + b_g)`` restricted to its allowed experts (the others
    get weight exactly 0), so all gates can be stacked into one ``(G, batch, E)`` tensor and
    applied with one :func:`mix`. ``allowed[g]`` lists the expert indices gate ``g`` may use.
    """

    def __init__(
        self, in_features: int, n_choices: int, allowed: Mapping[str, Sequence[int]]
    ) -> None:
        super().__init__()
        self.names = tuple(allowed)
        self.linears = nn.ModuleDict({g: nn.Linear(in_features, n_choices) for g in allowed})
        mask = torch.ones(len(allowed), n_choices, dtype=torch.bool)
        for i, g in enumerate(allowed):
            idx = list(allowed[g])
            if not idx or min(idx) < 0 or max(idx) >= n_choices:
                raise ValueError(
                    f"gate {g!r}: allowed experts {idx} out of range 0..{n_choices - 1}"
                )
            mask[i, idx] = False
        self.register_buffer("blocked", mask)  # True where a gate may not route

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """``inputs[i]`` is gate ``names[i]``'s ``(batch, in)`` input; returns ``(G, batch, E)``."""
        logits = torch.stack([self.linears[g](x) for g, x in zip(self.names, inputs, strict=True)])
        blocked: Tensor = self.blocked  # type: ignore[assignment]
        return torch.softmax(logits.masked_fill(blocked[:, None, :], float("-inf")), dim=-1)

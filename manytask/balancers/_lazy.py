"""Per-task state as a K x D buffer whose width D (the Jacobian's columns) is known only at the
first call: sized lazily, and resized when a state dict is loaded into a fresh balancer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class LazyRows(nn.Module):
    """Mixin for balancers holding buffers of shape (K, D) with D fixed at the first call.

    The buffers start with shape (K, 0); :meth:`ensure_width` sizes them, and loading a state
    dict first resizes them to the saved shape (so a checkpoint restores into a new object).
    """

    lazy_buffers: tuple[str, ...] = ()

    def ensure_width(self, d: int, dtype: torch.dtype, device: torch.device) -> None:
        for name in self.lazy_buffers:
            buf: Tensor = getattr(self, name)
            if buf.shape[1] == 0:
                setattr(self, name, torch.zeros((buf.shape[0], d), dtype=dtype, device=device))
            elif buf.shape[1] != d:
                raise ValueError(
                    f"{type(self).__name__}: the Jacobian has {d} columns, but the state was "
                    f"built for {buf.shape[1]} (a different model or mode?)"
                )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in self.lazy_buffers:
            saved = state_dict.get(prefix + name)
            if saved is not None and getattr(self, name).shape != saved.shape:
                setattr(self, name, torch.zeros_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args)

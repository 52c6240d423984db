"""Composable parts of the pipeline of :func:`manytask.backward`.

A part may act on the checked losses before anything is decided (:meth:`Part.on_losses`,
Rep-MTL's regulariser) and may add a vector to the shared update of a Gramian weighting in
exact mode (:meth:`Part.shared_update`, flat regions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..balancers.base import Balancer
from .gradients import Features


@dataclass
class StepView:
    """What a part adding to the shared update sees: the method, the present tasks, their
    losses, the K x D Jacobian w.r.t. the shared parameters ``params``."""

    method: Balancer
    tasks: tuple[str, ...]
    losses: Tensor
    jacobian: Tensor
    params: list[Tensor]


class Part:
    """Base of the pipeline's parts; each hook does nothing by default."""

    #: whether :meth:`shared_update` contributes (the engine then applies at the parameters)
    adds_update: ClassVar[bool] = False

    def on_losses(self, losses: Mapping[str, Tensor], features: Features | None) -> None:
        """Called with the checked losses before the method decides."""

    def shared_update(self, view: StepView) -> Tensor:
        """A flat vector over the shared parameters, added to the method's update."""
        raise NotImplementedError(f"{type(self).__name__} adds no shared update")

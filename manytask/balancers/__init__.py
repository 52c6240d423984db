"""Training methods ("balancers"): loss weighting and gradient balancing.

Every method is a small :class:`Balancer` subclass registered under a name; pick one with
:func:`make_balancer` (``manytask.make_balancer("mgda")``) or instantiate the class.
"""

from .base import Balancer, Decision
from .registry import available, build, make_balancer, parameters, register
from .weighting import EqualWeighting, FixedWeights

__all__ = [
    "Balancer",
    "Decision",
    "EqualWeighting",
    "FixedWeights",
    "available",
    "build",
    "make_balancer",
    "parameters",
    "register",
]

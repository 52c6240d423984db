"""Training methods ("balancers"): loss weighting and gradient balancing.

Every method is a small :class:`Balancer` subclass registered under a name; pick one with
:func:`make_balancer` (``manytask.make_balancer("mgda")``) or instantiate the class.
"""

from ._gramian import NonFiniteGradientError
from .aligned_mtl import AlignedMTL
from .base import (
    Balancer,
    Decision,
    GramianLossWeighting,
    GramianWeighting,
    JacobianAggregator,
    LossWeighting,
    State,
)
from .cagrad import CAGrad
from .config_method import ConFIG
from .dbmtl import DBMTL
from .dualproj import DualProj
from .dwa import DynamicWeightAverage
from .excess_mtl import ExcessMTL
from .fairgrad import FairGrad
from .famo import FAMO
from .gls import GLS
from .graddrop import GradDrop
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl import IMTLG
from .imtl_full import IMTL
from .imtl_l import IMTLL
from .mgda import MGDA
from .moco import MoCo
from .modo import MoDo
from .nash_mtl import NashMTL
from .pcgrad import PCGrad
from .periodic import EverySteps, Periodic
from .registry import available, build, make_balancer, parameters, register
from .rlw import RLW
from .sdmgrad import SDMGrad
from .stch import STCH
from .uncertainty import UncertaintyWeighting
from .upgrad import UPGrad
from .weighting import EqualWeighting, FixedWeights

__all__ = [
    "DBMTL",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "RLW",
    "STCH",
    "AlignedMTL",
    "Balancer",
    "CAGrad",
    "ConFIG",
    "Decision",
    "DualProj",
    "DynamicWeightAverage",
    "EqualWeighting",
    "EverySteps",
    "ExcessMTL",
    "FairGrad",
    "FixedWeights",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GramianLossWeighting",
    "GramianWeighting",
    "JacobianAggregator",
    "LossWeighting",
    "MoCo",
    "MoDo",
    "NashMTL",
    "NonFiniteGradientError",
    "PCGrad",
    "Periodic",
    "SDMGrad",
    "State",
    "UPGrad",
    "UncertaintyWeighting",
    "available",
    "build",
    "make_balancer",
    "parameters",
    "register",
]

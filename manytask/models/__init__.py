"""Multi-task architectures."""

from .adatt import AdaTT
from .apem import APEM
from .base import MultiTaskModel, mlp
from .cross_stitch import CrossStitch
from .dselect_k import DSelectK
from .dtrn import DTRN
from .encoder_top import EncoderTop, TopLayers
from .esmm import AITM, ESMM
from .experts import ExpertSet, Routed
from .factory import ARCHITECTURES, hard_sharing, make_model, shared_bottom
from .hard_sharing import HardSharing
from .home import HoME
from .inputs import TabularInput
from .moe import MMoE, OMoE
from .mtan import MTAN
from .multitab import MultiTabNet, multitask_mask
from .per_task import PerTaskModel
from .ple import CGC, PLE
from .routing import ExpertReport, expert_report, expert_usage
from .sparse_moe import TaskRoutedMoE

__all__ = [
    "AITM",
    "APEM",
    "ARCHITECTURES",
    "CGC",
    "DTRN",
    "ESMM",
    "MTAN",
    "PLE",
    "AdaTT",
    "CrossStitch",
    "DSelectK",
    "EncoderTop",
    "ExpertReport",
    "ExpertSet",
    "HardSharing",
    "HoME",
    "MMoE",
    "MultiTabNet",
    "MultiTaskModel",
    "OMoE",
    "PerTaskModel",
    "Routed",
    "TabularInput",
    "TaskRoutedMoE",
    "TopLayers",
    "expert_report",
    "expert_usage",
    "hard_sharing",
    "make_model",
    "mlp",
    "multitask_mask",
    "shared_bottom",
]

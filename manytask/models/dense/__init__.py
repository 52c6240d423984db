"""Architectures for dense tasks: backbones, per-task decoders, hard sharing, MTAN,
cross-stitch, and the papers' TaskExpert, Medusa, controllable (slimmable) networks, M³ViT,
TAPS and Learning to Branch."""

from .architectures import DenseCrossStitch, DenseHardSharing, DenseHead, dense_heads, dense_mtan
from .backbones import (
    Backbone,
    BasicBlock,
    ResNetBackbone,
    SegNetBackbone,
    TimmBackbone,
    make_backbone,
)
from .branching import LearnToBranch
from .m3vit import M3ViT
from .medusa import Medusa
from .slimmable import ControllableMTL, distillation_loss, search_widths
from .taps import TAPS
from .taskexpert import TaskExpert

__all__ = ["TAPS", "Backbone", "BasicBlock", "ControllableMTL", "DenseCrossStitch",
           "DenseHardSharing", "DenseHead", "LearnToBranch", "M3ViT", "Medusa", "ResNetBackbone",
           "SegNetBackbone", "TaskExpert", "TimmBackbone", "dense_heads", "dense_mtan",
           "distillation_loss", "make_backbone", "search_widths"]

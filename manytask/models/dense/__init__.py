"""Architectures for dense tasks: backbones, per-task decoders, hard sharing, MTAN,
cross-stitch, on generated scenes or the NYUv2/Cityscapes layouts."""

from .architectures import DenseCrossStitch, DenseHardSharing, DenseHead, dense_heads, dense_mtan
from .backbones import (
    BasicBlock,
    ResNetBackbone,
    SegNetBackbone,
    TimmBackbone,
    make_backbone,
)

__all__ = ["BasicBlock", "DenseCrossStitch", "DenseHardSharing", "DenseHead", "ResNetBackbone",
           "SegNetBackbone", "TimmBackbone", "dense_heads", "dense_mtan", "make_backbone"]

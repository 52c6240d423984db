"""Merge methods, one family per module, all registered by name."""

from . import averaging, consensus, geometric, passthrough, selective, sparse, spherical
from .base import (
    METHODS,
    Chunk,
    MergeMethod,
    TensorPlan,
    available_methods,
    get_method,
    register,
)

__all__ = [
    "METHODS",
    "Chunk",
    "MergeMethod",
    "TensorPlan",
    "available_methods",
    "averaging",
    "consensus",
    "geometric",
    "get_method",
    "passthrough",
    "register",
    "selective",
    "sparse",
    "spherical",
]

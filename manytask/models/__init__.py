"""Multi-task architectures."""

from .base import MultiTaskModel, mlp
from .hard_sharing import HardSharing

__all__ = ["HardSharing", "MultiTaskModel", "mlp"]

"""Training: the Trainer, checkpoints and run logs."""

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .logs import RunLog
from .trainer import Trainer

__all__ = [
    "CheckpointError",
    "RunLog",
    "Trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

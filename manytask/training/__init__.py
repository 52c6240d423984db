"""Training: the Trainer, checkpoints and run logs."""

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import ShardedBatches, init_from_env, sync_gradients
from .logs import RunLog
from .trainer import Trainer

__all__ = [
    "CheckpointError",
    "RunLog",
    "ShardedBatches",
    "Trainer",
    "init_from_env",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "sync_gradients",
]

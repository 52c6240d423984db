"""Training: the Trainer, callbacks, checkpoints, run folders, logs and saved models."""

from .callbacks import BestCheckpoint, Callback, EarlyStopping
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import ShardedBatches, init_from_env, sync_gradients
from .logs import RunLog
from .pretrained import from_pretrained, save_pretrained
from .trainer import Trainer

__all__ = [
    "BestCheckpoint",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "RunLog",
    "ShardedBatches",
    "Trainer",
    "from_pretrained",
    "init_from_env",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_pretrained",
    "sync_gradients",
]

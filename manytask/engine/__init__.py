"""The train-together engine: per-task gradient information and the one pipeline of
:func:`manytask.backward` (check the losses, gather them across processes, let the method
decide, apply the decision), with its composable parts (Rep-MTL, flat regions) and the
process-group helpers it uses."""

from .apply import HeadGrad
from .backward import BackwardResult, GradientOverflowError, NonFiniteLossError, backward
from .collectives import DistContext, context, init_from_env, is_main_process, sync_gradients
from .flat import FlatRegions, flat_backward
from .gradients import MODES, Features, Mode, TaskGradients, cosine_similarity, task_gradients
from .parts import Part
from .rep_mtl import RepMTL, rep_mtl_backward, rep_mtl_regularizer

__all__ = [
    "MODES",
    "BackwardResult",
    "DistContext",
    "Features",
    "FlatRegions",
    "GradientOverflowError",
    "HeadGrad",
    "Mode",
    "NonFiniteLossError",
    "Part",
    "RepMTL",
    "TaskGradients",
    "backward",
    "context",
    "cosine_similarity",
    "flat_backward",
    "init_from_env",
    "is_main_process",
    "rep_mtl_backward",
    "rep_mtl_regularizer",
    "sync_gradients",
    "task_gradients",
]

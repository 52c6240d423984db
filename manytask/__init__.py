"""manytask: multi-task learning on PyTorch."""

from .balancers import Balancer, Decision, available, make_balancer
from .engine.backward import BackwardResult, NonFiniteLossError, backward
from .engine.flat import flat_backward
from .engine.gradients import task_gradients
from .merging import merge, merge_state_dicts
from .models import HardSharing, MultiTaskModel
from .tasks import Metric, OutputError, TargetError, Task, task_losses
from .training import Trainer

__version__ = "0.1.0"

__all__ = [
    "BackwardResult",
    "Balancer",
    "Decision",
    "HardSharing",
    "Metric",
    "MultiTaskModel",
    "NonFiniteLossError",
    "OutputError",
    "TargetError",
    "Task",
    "Trainer",
    "__version__",
    "available",
    "backward",
    "flat_backward",
    "make_balancer",
    "merge",
    "merge_state_dicts",
    "task_gradients",
    "task_losses",
]

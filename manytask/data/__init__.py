"""Data: the bundled MultiDigits data set, multi-task batching and task samplers."""

from .batching import TensorBatches, collate_multitask
from .multidigits import MultiDigits, digit_task, source_split
from .sampling import (
    EXP3Sampler,
    MultiTaskBatches,
    ProportionalSampler,
    RoundRobinSampler,
    TaskSampler,
    TemperatureSampler,
    TwoPhaseSampler,
    dataset_sizes,
    loss_drop_reward,
)

__all__ = [
    "EXP3Sampler",
    "MultiDigits",
    "MultiTaskBatches",
    "ProportionalSampler",
    "RoundRobinSampler",
    "TaskSampler",
    "TemperatureSampler",
    "TensorBatches",
    "TwoPhaseSampler",
    "collate_multitask",
    "dataset_sizes",
    "digit_task",
    "loss_drop_reward",
    "source_split",
]

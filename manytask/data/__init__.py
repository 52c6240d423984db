"""Data: the bundled MultiDigits data set and multi-task batching."""

from .batching import TensorBatches, collate_multitask
from .multidigits import MultiDigits, digit_task, source_split

__all__ = ["MultiDigits", "TensorBatches", "collate_multitask", "digit_task", "source_split"]

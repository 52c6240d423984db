"""Model merging: a streaming engine, the merge methods, and their configuration.

``merge(config, output_dir)`` merges checkpoints on disk (safetensors files, Hugging Face
folders, PEFT LoRA adapters) tensor by tensor into a new folder; ``merge_state_dicts`` does the
same in memory. Methods are registered by name (``available_methods()``). The learned merges
(:mod:`manytask.merging.learned`: ``fisher_merge``, ``regmean_merge``, ``adamerging``,
``representation_surgery`` and the papers' methods) work on in-memory modules with a few
batches of data per task.
Nothing here imports transformers or peft.
"""

from .api import MergeReport, merge, merge_state_dicts
from .config import MergeConfig, ModelEntry
from .engine import NonFiniteTensorError
from .learned import (
    AdaMergingResult,
    DataAwareResult,
    SurgeryModule,
    SurgeryResult,
    adamerging,
    fisher_merge,
    regmean_merge,
    representation_surgery,
)
from .methods import MergeMethod, available_methods, get_method
from .selection import OrderStatistics, select

__all__ = [
    "AdaMergingResult",
    "DataAwareResult",
    "MergeConfig",
    "MergeMethod",
    "MergeReport",
    "ModelEntry",
    "NonFiniteTensorError",
    "OrderStatistics",
    "SurgeryModule",
    "SurgeryResult",
    "adamerging",
    "available_methods",
    "fisher_merge",
    "get_method",
    "merge",
    "merge_state_dicts",
    "regmean_merge",
    "representation_surgery",
    "select",
]

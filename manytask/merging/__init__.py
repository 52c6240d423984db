"""Model merging: a streaming engine, the merge methods, and their configuration.

``merge(config, output_dir)`` merges checkpoints on disk (safetensors files, Hugging Face
folders, PEFT LoRA adapters) tensor by tensor into a new folder; ``merge_state_dicts`` does the
same in memory. Methods are registered by name (``available_methods()``). The data-aware
``fisher_merge``, ``regmean_merge``, ``adamerging`` and ``representation_surgery`` work on
in-memory modules with a few batches of data per task.
Nothing here imports transformers or peft.
"""

from .adamerging import AdaMergingResult, adamerging
from .api import MergeReport, merge, merge_state_dicts
from .config import MergeConfig, ModelEntry
from .data_aware import DataAwareResult, fisher_merge, regmean_merge
from .engine import NonFiniteTensorError
from .methods import MergeMethod, available_methods, get_method
from .selection import OrderStatistics, select
from .surgery import SurgeryModule, SurgeryResult, representation_surgery

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
